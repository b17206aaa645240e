#include <catch2/catch.hpp>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mhla/error.hpp"
#include "mhla/safetensors.hpp"

using namespace mhla;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "mhla-st-XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    return out;
  }

private:
  fs::path path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le_u64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A safetensors file from a header text and a data buffer, the way any writer would lay it out.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le_u64(header.size()) + header + data;
}

std::string le_bytes_u16(std::initializer_list<uint16_t> xs) {
  std::string s;
  for (auto x : xs) {
    s += static_cast<char>(x & 0xff);
    s += static_cast<char>(x >> 8);
  }
  return s;
}

// The message of the mhla::Error that opening `path` throws ("" if none is thrown).
std::string open_error(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A valid header for one F32 tensor "t" of 2 elements, patched by the caller.
json one_tensor_header() { return {{"t", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}}; }
const std::string kEightBytes(8, '\0');

}  // namespace

TEST_CASE("safetensors round trip keeps names, shapes, values and metadata", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("rt.safetensors");
  const std::map<std::string, TensorToWrite> tensors = {
      {"b", {{2, 3}, {1, -2, 3.5f, 0, 1e-30f, -7e20f}}},
      {"a", {{4}, {0.25f, 0.5f, 0.75f, 1}}},
      {"scalar", {{}, {42}}},
      {"empty", {{0, 5}, {}}}};
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "x"}});

  const auto f = SafetensorsFile::open(path);
  CHECK(f.path() == path);
  CHECK(f.names() == std::vector<std::string>{"a", "b", "empty", "scalar"});
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}});
  for (const auto& [name, t] : tensors) {
    INFO(name);
    REQUIRE(f.contains(name));
    CHECK(f.tensor(name).dtype == DType::F32);
    CHECK(f.tensor(name).shape == t.shape);
    CHECK(f.tensor(name).elements() == static_cast<int64_t>(t.values.size()));
    CHECK(f.read_f32(name) == t.values);
    CHECK(f.read_f64(name) == std::vector<double>(t.values.begin(), t.values.end()));
  }
  CHECK_FALSE(f.contains("c"));

  // Layout: the header is space-padded to a multiple of 8 and the data follows the sorted names.
  const std::string bytes = slurp(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  CHECK(n % 8 == 0);
  const json header = json::parse(bytes.substr(8, n));
  CHECK(header["a"]["data_offsets"] == json({0, 16}));
  CHECK(header["b"]["data_offsets"] == json({16, 40}));
  CHECK(bytes.size() == 8 + n + 4 * 11);
}

TEST_CASE("safetensors moved files keep their tensors valid", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, {{"x", {{3}, {1, 2, 3}}}});
  auto f = SafetensorsFile::open(path);
  SafetensorsFile g = std::move(f);
  CHECK(g.read_f32("x") == std::vector<float>{1, 2, 3});
  g = SafetensorsFile::open(path);
  CHECK(g.tensor("x").bytes == 12);
}

TEST_CASE("safetensors F16 conversion covers normals, subnormals, zeros, inf and NaN", "[safetensors]") {
  const std::string raw = le_bytes_u16({0x3C00, 0xC000, 0x7BFF, 0x0400, 0x0001, 0x03FF, 0x8000, 0x7C00, 0xFC00,
                                        0x7E00, 0x3555});
  const auto* src = reinterpret_cast<const std::byte*>(raw.data());
  std::vector<float> f(11);
  std::vector<double> d(11);
  convert_to_f32(DType::F16, src, 11, f.data());
  convert_to_f64(DType::F16, src, 11, d.data());
  CHECK(f[0] == 1.0f);
  CHECK(f[1] == -2.0f);
  CHECK(f[2] == 65504.0f);
  CHECK(f[3] == std::ldexp(1.0f, -14));           // smallest normal
  CHECK(f[4] == std::ldexp(1.0f, -24));           // smallest subnormal
  CHECK(f[5] == std::ldexp(1023.0f, -24));        // largest subnormal
  CHECK((f[6] == 0.0f && std::signbit(f[6])));   // negative zero
  CHECK(f[7] == std::numeric_limits<float>::infinity());
  CHECK(f[8] == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(f[9]));
  CHECK(f[10] == 0.333251953125f);
  for (int i = 0; i < 11; ++i) {
    INFO(i);
    if (!std::isnan(f[i])) CHECK(d[i] == static_cast<double>(f[i]));
  }
  CHECK(std::isnan(d[9]));
}

TEST_CASE("safetensors BF16 and F64 conversion of known values", "[safetensors]") {
  const std::string bf = le_bytes_u16({0x3F80, 0xC0A0, 0x7F80, 0x7FC0, 0x0001, 0x3EAB});
  std::vector<float> f(6);
  convert_to_f32(DType::BF16, reinterpret_cast<const std::byte*>(bf.data()), 6, f.data());
  CHECK(f[0] == 1.0f);
  CHECK(f[1] == -5.0f);
  CHECK(f[2] == std::numeric_limits<float>::infinity());
  CHECK(std::isnan(f[3]));
  CHECK(f[4] == std::ldexp(1.0f, -133));  // a bf16 subnormal
  CHECK(f[5] == 0.333984375f);

  const std::vector<double> src = {0.1, -1e-300, 3.0, std::numeric_limits<double>::infinity()};
  std::string raw(src.size() * 8, '\0');
  for (size_t i = 0; i < src.size(); ++i) {
    const auto bits = std::bit_cast<uint64_t>(src[i]);
    for (int b = 0; b < 8; ++b) raw[i * 8 + b] = static_cast<char>(bits >> (8 * b));
  }
  std::vector<float> f32(4);
  std::vector<double> f64(4);
  convert_to_f32(DType::F64, reinterpret_cast<const std::byte*>(raw.data()), 4, f32.data());
  convert_to_f64(DType::F64, reinterpret_cast<const std::byte*>(raw.data()), 4, f64.data());
  CHECK(f64 == src);
  CHECK(f32[0] == 0.1f);
  CHECK((f32[1] == 0.0f && std::signbit(f32[1])));
  CHECK(f32[2] == 3.0f);
  CHECK(std::isinf(f32[3]));
  CHECK(dtype_size(DType::F64) == 8);
  CHECK(dtype_size(DType::BF16) == 2);
  CHECK(to_string(DType::BF16) == "BF16");
}

TEST_CASE("safetensors reads F16, BF16 and F64 tensors from a file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("mixed.safetensors");
  const json header = {{"h", {{"dtype", "F16"}, {"shape", {2}}, {"data_offsets", {0, 4}}}},
                       {"b", {{"dtype", "BF16"}, {"shape", {1, 2}}, {"data_offsets", {4, 8}}}},
                       {"d", {{"dtype", "F64"}, {"shape", {1}}, {"data_offsets", {8, 16}}}}};
  std::string d(8, '\0');
  const auto bits = std::bit_cast<uint64_t>(-2.5);
  for (int b = 0; b < 8; ++b) d[b] = static_cast<char>(bits >> (8 * b));
  // An odd header length puts the data at an odd offset: reads must not assume alignment.
  std::string text = header.dump();
  if (text.size() % 2 == 0) text += ' ';
  spit(path, file_bytes(text, le_bytes_u16({0x3C00, 0x0001, 0x3F80, 0xC0A0}) + d));
  const auto f = SafetensorsFile::open(path);
  CHECK(f.tensor("h").dtype == DType::F16);
  CHECK(f.read_f32("h") == std::vector<float>{1.0f, std::ldexp(1.0f, -24)});
  CHECK(f.read_f64("b") == std::vector<double>{1.0, -5.0});
  CHECK(f.read_f32("d") == std::vector<float>{-2.5f});
}

TEST_CASE("safetensors rejects every malformed header with a one-line message", "[safetensors]") {
  struct Case {
    const char* what;
    std::string bytes;
    std::string tensor;  // the tensor the message must name ("" for file-level problems)
    std::string expect;
  };
  const auto with = [](const json& h) { return file_bytes(h.dump(), kEightBytes); };
  auto patched = [&](const char* key, const json& value) {
    json h = one_tensor_header();
    h["t"][key] = value;
    return with(h);
  };
  auto without = [&](const char* key) {
    json h = one_tensor_header();
    h["t"].erase(key);
    return with(h);
  };
  json meta_number = one_tensor_header();
  meta_number["__metadata__"] = {{"n", 3}};
  json meta_list = one_tensor_header();
  meta_list["__metadata__"] = json::array({"a"});

  const std::vector<Case> cases = {
      {"empty file", "", "", "shorter than the 8-byte"},
      {"3-byte file", "abc", "", "shorter than the 8-byte"},
      {"header longer than the file", le_u64(100) + "{}", "", "exceeds"},
      {"absurd header length", le_u64(uint64_t{1} << 40) + "{}", "", "absurd"},
      {"invalid JSON", file_bytes("{\"t\": [", kEightBytes), "", "not valid JSON"},
      {"header is a list", file_bytes("[1, 2]", ""), "", "must be a JSON object"},
      {"tensor entry not an object", with({{"t", 5}}), "t", "entry must be a JSON object"},
      {"missing dtype", without("dtype"), "t", "'dtype'"},
      {"unknown dtype", patched("dtype", "Q7"), "t", "unknown dtype 'Q7'"},
      {"unsupported dtype", patched("dtype", "I32"), "t", "dtype I32 is not supported"},
      {"unsupported F8", patched("dtype", "F8_E4M3"), "t", "dtype F8_E4M3 is not supported"},
      {"shape not a list", patched("shape", 2), "t", "'shape' must be a list"},
      {"negative dimension", patched("shape", {-2}), "t", "'shape' must be a list"},
      {"fractional dimension", patched("shape", {1.5}), "t", "'shape' must be a list"},
      {"string dimension", patched("shape", {"2"}), "t", "'shape' must be a list"},
      {"missing shape", without("shape"), "t", "'shape' must be a list"},
      {"huge shape", patched("shape", {uint64_t{1} << 40, uint64_t{1} << 40}), "t", "too many elements"},
      {"offsets of one number", patched("data_offsets", {8}), "t", "'data_offsets' must be [begin, end]"},
      {"offsets reversed", patched("data_offsets", {8, 0}), "t", "'data_offsets' must be [begin, end]"},
      {"negative offset", patched("data_offsets", {-1, 7}), "t", "'data_offsets' must be [begin, end]"},
      {"offsets not a list", patched("data_offsets", "0-8"), "t", "'data_offsets' must be [begin, end]"},
      {"missing offsets", without("data_offsets"), "t", "'data_offsets' must be [begin, end]"},
      {"end beyond the buffer", patched("data_offsets", {4, 12}), "t", "beyond the 8-byte data buffer"},
      {"byte length mismatch", patched("shape", {3}), "t", "needs 3 x 4 bytes"},
      {"metadata value not a string", with(meta_number), "", "__metadata__ value of 'n' must be a string"},
      {"metadata not an object", with(meta_list), "", "__metadata__ must be an object"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string path = dir.file("bad.safetensors");
    spit(path, c.bytes);
    const std::string msg = open_error(path);
    INFO(msg);
    CHECK_THAT(msg, Catch::Contains(path));
    CHECK_THAT(msg, Catch::Contains(c.expect));
    if (!c.tensor.empty()) CHECK_THAT(msg, Catch::Contains("tensor '" + c.tensor + "'"));
    CHECK(msg.find('\n') == std::string::npos);
  }
}

TEST_CASE("safetensors rejects every truncation of a valid file", "[safetensors]") {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  write_safetensors(good, {{"w", {{2, 2}, {1, 2, 3, 4}}}, {"x", {{3}, {5, 6, 7}}}}, {{"k", "v"}});
  const std::string bytes = slurp(good);
  const std::string cut = dir.file("cut.safetensors");
  for (size_t n = 0; n < bytes.size(); ++n) {
    INFO("kept " << n << " of " << bytes.size() << " bytes");
    spit(cut, bytes.substr(0, n));
    const std::string msg = open_error(cut);
    CHECK_THAT(msg, Catch::Contains(cut));
  }
}

TEST_CASE("safetensors survives corrupted bytes: every file opens or throws mhla::Error", "[safetensors]") {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  write_safetensors(good, {{"w", {{2, 2}, {1, 2, 3, 4}}}, {"x", {{3}, {5, 6, 7}}}}, {{"k", "v"}});
  const std::string bytes = slurp(good);
  const std::string bad = dir.file("bad.safetensors");
  for (size_t i = 0; i < bytes.size(); ++i)
    for (const char c : {'\0', '"', '-', '9', ']', '\xff'}) {
      std::string mutated = bytes;
      mutated[i] = c;
      spit(bad, mutated);
      INFO("byte " << i << " set to " << static_cast<int>(c));
      try {
        const auto f = SafetensorsFile::open(bad);
        for (const auto& name : f.names())
          CHECK(f.read_f64(name).size() == static_cast<size_t>(f.tensor(name).elements()));
      } catch (const Error& e) {
        CHECK_THAT(e.what(), Catch::Contains(bad));
      }
    }
}

TEST_CASE("safetensors names the file and tensor when a tensor or the file is missing", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("one.safetensors");
  write_safetensors(path, {{"x", {{1}, {1}}}});
  const auto f = SafetensorsFile::open(path);
  CHECK_THROWS_AS(f.tensor("y"), Error);
  CHECK_THROWS_WITH(f.tensor("y"), Catch::Contains(path) && Catch::Contains("'y'") && Catch::Contains("x"));
  CHECK_THROWS_WITH(f.read_f32("y"), Catch::Contains("'y'"));
  CHECK_THAT(open_error(dir.file("absent.safetensors")), Catch::Contains("absent.safetensors") &&
                                                              Catch::Contains("No such file"));
  CHECK_THAT(open_error(dir.file("")), Catch::Contains("not a regular file"));
}

TEST_CASE("safetensors writes atomically and leaves no temporary file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  write_safetensors(path, {{"x", {{2}, {1, 2}}}});
  write_safetensors(path, {{"x", {{3}, {4, 5, 6}}}});
  CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
  CHECK(SafetensorsFile::open(path).read_f32("x") == std::vector<float>{4, 5, 6});
}

TEST_CASE("safetensors write failures keep the destination and leave no temporary file", "[safetensors]") {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  write_safetensors(path, {{"x", {{2}, {1, 2}}}});
  const std::string before = slurp(path);

  SECTION("values that do not match the shape") {
    CHECK_THROWS_WITH(write_safetensors(path, {{"x", {{3}, {1, 2}}}}),
                      Catch::Contains(path) && Catch::Contains("'x'") && Catch::Contains("[3]"));
    CHECK_THROWS_AS(write_safetensors(path, {{"x", {{-1}, {}}}}), Error);
    CHECK_THROWS_AS(write_safetensors(path, {{"__metadata__", {{1}, {1}}}}), Error);
  }
  SECTION("the rename fails (the destination is a directory)") {
    fs::create_directory(dir.file("taken"));
    CHECK_THROWS_WITH(write_safetensors(dir.file("taken"), {{"x", {{1}, {1}}}}), Catch::Contains("taken"));
    CHECK(fs::is_directory(dir.file("taken")));
    fs::remove(dir.file("taken"));
  }
  SECTION("the directory does not exist") {
    CHECK_THROWS_WITH(write_safetensors(dir.file("no/such/dir/o.safetensors"), {{"x", {{1}, {1}}}}),
                      Catch::Contains("no/such/dir"));
  }
  SECTION("the directory is not writable") {
    if (geteuid() == 0) return;  // root writes anywhere: nothing to check
    fs::permissions(dir.file(""), fs::perms::owner_write | fs::perms::group_write | fs::perms::others_write,
                    fs::perm_options::remove);
    CHECK_THROWS_WITH(write_safetensors(path, {{"x", {{1}, {9}}}}), Catch::Contains(path));
    fs::permissions(dir.file(""), fs::perms::owner_all, fs::perm_options::add);
  }
  CHECK(slurp(path) == before);
  CHECK(dir.entries() == std::vector<std::string>{"keep.safetensors"});
}
