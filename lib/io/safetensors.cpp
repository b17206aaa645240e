#include "mhla/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <utility>

#include "mhla/error.hpp"

namespace mhla {

namespace {

using json = nlohmann::json;

// A header this large is a corrupt length field, not a real model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr std::string_view kMetadataKey = "__metadata__";

std::string errno_text() { return std::strerror(errno); }

[[noreturn]] void fail_file(const std::string& path, std::string_view problem) {
  throw Error(fmt::format("safetensors file '{}': {}", path, problem));
}

[[noreturn]] void fail_tensor(const std::string& path, const std::string& tensor, std::string_view problem) {
  throw Error(fmt::format("safetensors file '{}', tensor '{}': {}", path, tensor, problem));
}

// Little-endian loads assembled byte by byte, so the host byte order does not matter.
uint64_t load_le(const std::byte* p, int bytes) {
  uint64_t x = 0;
  for (int i = bytes - 1; i >= 0; --i) x = (x << 8) | std::to_integer<uint64_t>(p[i]);
  return x;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in fp32
    const float mag = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -mag : mag;
  }
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf, NaN (payload kept)
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));          // rebias 15 -> 127
}

float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

// Element i of `src` as double; every supported dtype is exactly representable in fp64.
double load_element(DType dtype, const std::byte* src, size_t i) {
  switch (dtype) {
    case DType::F64: return std::bit_cast<double>(load_le(src + 8 * i, 8));
    case DType::F32: return std::bit_cast<float>(static_cast<uint32_t>(load_le(src + 4 * i, 4)));
    case DType::F16: return f16_to_f32(static_cast<uint16_t>(load_le(src + 2 * i, 2)));
    case DType::BF16: return bf16_to_f32(static_cast<uint16_t>(load_le(src + 2 * i, 2)));
  }
  return 0;
}

std::optional<DType> parse_dtype(std::string_view s) {
  if (s == "F64") return DType::F64;
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  return std::nullopt;
}

bool is_known_unsupported_dtype(std::string_view s) {
  static constexpr std::string_view kOthers[] = {"BOOL",    "U8",      "I8",      "U16",     "I16",
                                                 "U32",     "I32",     "U64",     "I64",     "F8_E5M2",
                                                 "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};
  for (auto o : kOthers)
    if (s == o) return true;
  return false;
}

// A read-only mapping of a whole file, unmapped on destruction.
class Mapping {
public:
  Mapping() = default;
  Mapping(const std::byte* data, size_t size) : data_(data), size_(size) {}
  Mapping(Mapping&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { release(); }

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

private:
  void release() {
    if (data_) munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
  }
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Closes a file descriptor on scope exit.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

Mapping map_file(const std::string& path) {
  FdGuard f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) fail_file(path, fmt::format("cannot open: {}", errno_text()));
  struct stat st {};
  if (fstat(f.fd, &st) != 0) fail_file(path, fmt::format("cannot stat: {}", errno_text()));
  if (!S_ISREG(st.st_mode)) fail_file(path, "not a regular file");
  const auto size = static_cast<size_t>(st.st_size);
  if (size < 8)
    fail_file(path, fmt::format("file is {} bytes, shorter than the 8-byte header length (truncated?)", size));
  void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (p == MAP_FAILED) fail_file(path, fmt::format("cannot memory-map: {}", errno_text()));
  return Mapping(static_cast<const std::byte*>(p), size);
}

std::string shape_text(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Product of non-negative dimensions; nullopt when it does not fit in int64. A zero dimension
// makes the product zero however large the others are.
std::optional<int64_t> element_count(const std::vector<int64_t>& shape) {
  for (auto d : shape)
    if (d == 0) return 0;
  int64_t n = 1;
  for (auto d : shape) {
    if (d > std::numeric_limits<int64_t>::max() / n) return std::nullopt;
    n *= d;
  }
  return n;
}

}  // namespace

std::string_view to_string(DType d) {
  switch (d) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
  }
  return "?";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F64: return 8;
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
  }
  return 0;
}

int64_t TensorView::elements() const { return element_count(shape).value_or(0); }

void convert_to_f32(DType dtype, const std::byte* src, size_t count, float* dst) {
  if (dtype == DType::F32 && std::endian::native == std::endian::little) {
    if (count > 0) std::memcpy(dst, src, count * sizeof(float));  // empty tensors may have null pointers
    return;
  }
  for (size_t i = 0; i < count; ++i) dst[i] = static_cast<float>(load_element(dtype, src, i));
}

void convert_to_f64(DType dtype, const std::byte* src, size_t count, double* dst) {
  for (size_t i = 0; i < count; ++i) dst[i] = load_element(dtype, src, i);
}

struct SafetensorsFile::Impl {
  std::string path;
  Mapping mapping;
  std::map<std::string, TensorView> tensors;
  std::map<std::string, std::string> metadata;
};

namespace {

// The header's JSON object; the data buffer starts right after it.
json parse_header(const std::string& path, const Mapping& m) {
  const uint64_t n = load_le(m.data(), 8);
  if (n > kMaxHeaderBytes)
    fail_file(path, fmt::format("header length {} is absurd (limit {} bytes): not a safetensors file or corrupt", n,
                                kMaxHeaderBytes));
  if (n > m.size() - 8)
    fail_file(path, fmt::format("header length {} exceeds the {} bytes after the length field (truncated?)", n,
                                m.size() - 8));
  const auto* begin = reinterpret_cast<const char*>(m.data() + 8);
  json header;
  try {
    header = json::parse(begin, begin + n);
  } catch (const json::exception& e) {
    fail_file(path, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) fail_file(path, fmt::format("header must be a JSON object, got {}", header.type_name()));
  return header;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const json& j) {
  if (!j.is_object()) fail_file(path, fmt::format("__metadata__ must be an object, got {}", j.type_name()));
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string())
      fail_file(path, fmt::format("__metadata__ value of '{}' must be a string, got {}", key, value.type_name()));
    out[key] = value.get<std::string>();
  }
  return out;
}

DType parse_tensor_dtype(const std::string& path, const std::string& name, const json& entry) {
  if (!entry.contains("dtype") || !entry["dtype"].is_string()) fail_tensor(path, name, "missing string field 'dtype'");
  const auto s = entry["dtype"].get<std::string>();
  if (auto d = parse_dtype(s)) return *d;
  if (is_known_unsupported_dtype(s))
    fail_tensor(path, name, fmt::format("dtype {} is not supported (supported: F64, F32, F16, BF16)", s));
  fail_tensor(path, name, fmt::format("unknown dtype '{}' (supported: F64, F32, F16, BF16)", s));
}

// A JSON value that is a non-negative integer (unsigned or a signed value >= 0).
std::optional<uint64_t> as_count(const json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer() && j.get<int64_t>() >= 0) return static_cast<uint64_t>(j.get<int64_t>());
  return std::nullopt;
}

std::vector<int64_t> parse_shape(const std::string& path, const std::string& name, const json& entry) {
  const auto bad = [&] {
    fail_tensor(path, name,
                fmt::format("'shape' must be a list of non-negative integers, got {}",
                            entry.contains("shape") ? entry["shape"].dump() : "nothing"));
  };
  if (!entry.contains("shape") || !entry["shape"].is_array()) bad();
  std::vector<int64_t> shape;
  for (const auto& d : entry["shape"]) {
    const auto n = as_count(d);
    if (!n || *n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) bad();
    shape.push_back(static_cast<int64_t>(*n));
  }
  if (!element_count(shape)) fail_tensor(path, name, fmt::format("shape {} has too many elements", shape_text(shape)));
  return shape;
}

TensorView parse_tensor(const std::string& path, const std::string& name, const json& entry, const std::byte* data,
                        size_t data_bytes) {
  if (!entry.is_object())
    fail_tensor(path, name, fmt::format("entry must be a JSON object, got {}", entry.type_name()));
  TensorView t;
  t.name = name;
  t.dtype = parse_tensor_dtype(path, name, entry);
  t.shape = parse_shape(path, name, entry);
  const json* offs = entry.contains("data_offsets") ? &entry["data_offsets"] : nullptr;
  const auto begin = offs && offs->is_array() && offs->size() == 2 ? as_count((*offs)[0]) : std::nullopt;
  const auto end = offs && offs->is_array() && offs->size() == 2 ? as_count((*offs)[1]) : std::nullopt;
  if (!begin || !end || *begin > *end)
    fail_tensor(path, name,
                fmt::format("'data_offsets' must be [begin, end] with 0 <= begin <= end, got {}",
                            offs ? offs->dump() : "nothing"));
  if (*end > data_bytes)
    fail_tensor(path, name,
                fmt::format("data_offsets [{}, {}] end beyond the {}-byte data buffer (truncated?)", *begin, *end,
                            data_bytes));
  t.bytes = static_cast<size_t>(*end - *begin);
  t.data = data + *begin;
  const auto elements = static_cast<uint64_t>(t.elements());
  if (elements > std::numeric_limits<uint64_t>::max() / dtype_size(t.dtype) ||
      elements * dtype_size(t.dtype) != t.bytes)
    fail_tensor(path, name,
                fmt::format("holds {} bytes but shape {} of {} needs {} x {} bytes", t.bytes, shape_text(t.shape),
                            to_string(t.dtype), elements, dtype_size(t.dtype)));
  return t;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->mapping = map_file(path);
  const json header = parse_header(path, impl->mapping);
  const size_t data_start = 8 + static_cast<size_t>(load_le(impl->mapping.data(), 8));
  const std::byte* data = impl->mapping.data() + data_start;
  const size_t data_bytes = impl->mapping.size() - data_start;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey)
      impl->metadata = parse_metadata(path, entry);
    else
      impl->tensors.emplace(name, parse_tensor(path, name, entry, data, data_bytes));
  }
  return SafetensorsFile(std::move(impl));
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const { return impl_->path; }

bool SafetensorsFile::contains(const std::string& name) const { return impl_->tensors.contains(name); }

const TensorView& SafetensorsFile::tensor(const std::string& name) const {
  const auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end())
    fail_tensor(impl_->path, name, fmt::format("no such tensor (the file holds: {})", fmt::join(names(), ", ")));
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensors.size());
  for (const auto& [name, t] : impl_->tensors) out.push_back(name);
  return out;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const TensorView& t = tensor(name);
  std::vector<float> out(static_cast<size_t>(t.elements()));
  convert_to_f32(t.dtype, t.data, out.size(), out.data());
  return out;
}

std::vector<double> SafetensorsFile::read_f64(const std::string& name) const {
  const TensorView& t = tensor(name);
  std::vector<double> out(static_cast<size_t>(t.elements()));
  convert_to_f64(t.dtype, t.data, out.size(), out.data());
  return out;
}

namespace {

// The JSON header, padded with spaces so the data buffer starts 8-byte aligned.
std::string make_header(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {  // std::map: sorted by name, as the data is laid out
    if (name.empty() || name == kMetadataKey)
      throw Error(fmt::format("cannot write '{}': '{}' is not a valid tensor name", path, name));
    const bool non_negative = std::ranges::all_of(t.shape, [](int64_t d) { return d >= 0; });
    const auto elements = non_negative ? element_count(t.shape) : std::nullopt;
    if (!elements || static_cast<uint64_t>(*elements) != t.values.size())
      throw Error(fmt::format("cannot write '{}': tensor '{}' has shape {} but {} values; give one value per element",
                              path, name, shape_text(t.shape), t.values.size()));
    const uint64_t bytes = t.values.size() * sizeof(float);
    header[name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_le_floats(std::FILE* f, const std::vector<float>& values) {
  if constexpr (std::endian::native == std::endian::little) {
    if (!values.empty()) std::fwrite(values.data(), sizeof(float), values.size(), f);
  } else {
    for (float x : values) {
      const auto bits = std::bit_cast<uint32_t>(x);
      const unsigned char b[4] = {static_cast<unsigned char>(bits), static_cast<unsigned char>(bits >> 8),
                                  static_cast<unsigned char>(bits >> 16), static_cast<unsigned char>(bits >> 24)};
      std::fwrite(b, 1, 4, f);
    }
  }
}

// Creates a new, uniquely named file beside `path` (same directory, so rename is atomic).
std::pair<int, std::string> create_temp_beside(const std::string& path) {
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string tmp = fmt::format("{}.tmp.{}.{}", path, ::getpid(), counter++);
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return {fd, std::move(tmp)};
    if (errno != EEXIST)
      throw Error(fmt::format("cannot write '{}': cannot create a temporary file beside it: {}", path, errno_text()));
  }
  throw Error(fmt::format("cannot write '{}': no free temporary file name beside it", path));
}

void write_contents(std::FILE* f, const std::string& header, const std::map<std::string, TensorToWrite>& tensors) {
  const uint64_t n = header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  std::fwrite(len, 1, 8, f);
  std::fwrite(header.data(), 1, header.size(), f);
  for (const auto& [name, t] : tensors) write_le_floats(f, t.values);
}

// Makes the rename itself durable; a failure here loses nothing already written.
void sync_directory_of(const std::string& path) {
  const auto dir = std::filesystem::path(path).parent_path();
  FdGuard d{::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd >= 0) ::fsync(d.fd);
}

}  // namespace

void write_safetensors(const std::string& path, const std::map<std::string, TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = make_header(path, tensors, metadata);
  auto [fd, tmp] = create_temp_beside(path);
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) {
    const std::string why = errno_text();
    ::close(fd);
    std::remove(tmp.c_str());
    throw Error(fmt::format("cannot write '{}': {}", path, why));
  }
  write_contents(f, header, tensors);
  // ferror catches failed writes; fflush and fsync catch the ones the OS reports late (disk full).
  bool ok = !std::ferror(f) && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  std::string why = ok ? "" : errno_text();
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    why = errno_text();
  }
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    why = errno_text();
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error(fmt::format("cannot write '{}': {}", path, why));
  }
  sync_directory_of(path);
}

}  // namespace mhla
