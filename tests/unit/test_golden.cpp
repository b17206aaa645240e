// Golden cases: small inputs with outputs computed in float64 by the independent Python
// reference (tools/reference), stored as safetensors under tests/data/golden. Every causal case
// runs through all three causal forms (parallel, chunked prefill, decode); every non-causal case
// through noncausal_forward. Each must match the stored output to 1e-5 relative L2 error.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mhla/causal.hpp"
#include "mhla/error.hpp"
#include "mhla/mixing.hpp"
#include "mhla/options.hpp"
#include "mhla/safetensors.hpp"

using namespace mhla;

namespace {

constexpr double kGoldenTolerance = 1e-5;

using Metadata = std::map<std::string, std::string>;

std::vector<std::filesystem::path> golden_files() {
  const std::filesystem::path dir = std::filesystem::path(MHLA_TEST_DATA_DIR) / "golden";
  std::vector<std::filesystem::path> files;
  if (std::filesystem::is_directory(dir))
    for (const auto& entry : std::filesystem::directory_iterator(dir))
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::optional<std::string> lookup(const Metadata& meta, const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end()) return std::nullopt;
  return it->second;
}

std::string required(const Metadata& meta, const std::string& key) {
  auto v = lookup(meta, key);
  if (!v) throw std::runtime_error(fmt::format("metadata key '{}' is missing", key));
  return *v;
}

double parse_double(const std::string& key, const std::string& text) {
  char* end = nullptr;
  const double x = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size())
    throw std::runtime_error(fmt::format("metadata '{}' = '{}' is not a number", key, text));
  return x;
}

int parse_int(const std::string& key, const std::string& text) {
  const double x = parse_double(key, text);
  if (x != std::floor(x)) throw std::runtime_error(fmt::format("metadata '{}' = '{}' is not an integer", key, text));
  return static_cast<int>(x);
}

bool parse_bool(const std::string& key, const std::string& text) {
  if (text == "true") return true;
  if (text == "false") return false;
  throw std::runtime_error(fmt::format("metadata '{}' = '{}' is not true or false", key, text));
}

// Shapes q [T][H][dk], k [T][Hkv][dk], v [T][Hkv][dv], o [T][H][dv].
HeadLayout layout_from(const SafetensorsFile& file, long long& tokens) {
  const auto& q = file.tensor("q").shape;
  const auto& k = file.tensor("k").shape;
  const auto& v = file.tensor("v").shape;
  const auto& o = file.tensor("o").shape;
  if (q.size() != 3 || k.size() != 3 || v.size() != 3 || o.size() != 3)
    throw std::runtime_error("q, k, v and o must be 3-D [T, heads, dim]");
  if (k[0] != q[0] || v[0] != q[0] || o[0] != q[0] || k[2] != q[2] || v[1] != k[1] || o[1] != q[1] || o[2] != v[2])
    throw std::runtime_error("inconsistent q/k/v/o shapes");
  tokens = q[0];
  HeadLayout layout;
  layout.heads = static_cast<int>(q[1]);
  layout.kv_heads = static_cast<int>(k[1]);
  layout.dk = static_cast<int>(q[2]);
  layout.dv = static_cast<int>(v[2]);
  return layout;
}

int mixing_blocks(const SafetensorsFile& file) {
  const auto& m = file.tensor("mixing").shape;
  if (m.size() != 2 || m[0] != m[1]) throw std::runtime_error("mixing must be a square [L, L] matrix");
  return static_cast<int>(m[0]);
}

template <class Options>
void common_options(const Metadata& meta, Options& o) {
  if (auto v = lookup(meta, "feature_map")) o.feature_map = parse_feature_map(*v);
  if (auto v = lookup(meta, "rotary")) o.rotary = parse_bool("rotary", *v);
  if (auto v = lookup(meta, "rotary_base")) o.rotary_base = parse_double("rotary_base", *v);
  if (auto v = lookup(meta, "scale")) o.scale = static_cast<float>(parse_double("scale", *v));
  if (auto v = lookup(meta, "normalize")) o.normalize = parse_bool("normalize", *v);
  if (auto v = lookup(meta, "eps")) o.eps = static_cast<float>(parse_double("eps", *v));
  if (auto v = lookup(meta, "block_size")) o.block_size = parse_int("block_size", *v);
}

CausalOptions causal_options(const Metadata& meta, const HeadLayout& layout) {
  CausalOptions o;
  o.layout = layout;
  common_options(meta, o);
  if (auto v = lookup(meta, "policy")) o.policy = parse_policy(*v);
  return o;
}

NonCausalOptions noncausal_options(const Metadata& meta, const HeadLayout& layout) {
  NonCausalOptions o;
  o.layout = layout;
  common_options(meta, o);
  const auto grid = lookup(meta, "grid");
  const auto window = lookup(meta, "window");
  if (grid.has_value() != window.has_value())
    throw std::runtime_error("metadata 'grid' and 'window' go together");
  if (grid) {
    const auto comma = grid->find(',');
    if (comma == std::string::npos) throw std::runtime_error(fmt::format("metadata grid '{}' is not 'H,W'", *grid));
    WindowGrid g;
    g.height = parse_int("grid", grid->substr(0, comma));
    g.width = parse_int("grid", grid->substr(comma + 1));
    g.window = parse_int("window", *window);
    o.grid = g;
  }
  return o;
}

double relative_l2(const std::vector<float>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(out[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num) / std::sqrt(den);
}

bool verbose() {
  const char* v = std::getenv("MHLA_GOLDEN_VERBOSE");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

// Runs one form and checks it against the stored output; exceptions become failures that name
// the case and the form.
void check_form(const std::string& name, const std::string& form, const std::vector<double>& expected,
                const std::function<void(std::vector<float>&)>& run) {
  std::vector<float> out(expected.size(), std::nanf(""));
  try {
    run(out);
  } catch (const std::exception& e) {
    FAIL_CHECK(fmt::format("golden case {} ({}): threw: {}", name, form, e.what()));
    return;
  }
  const double err = relative_l2(out, expected);
  if (verbose()) std::cout << fmt::format("golden {:40s} {:22s} rel err {:.3e}\n", name, form, err);
  INFO(fmt::format("golden case {} ({}): relative L2 error {:.3e}, tolerance {:.0e}", name, form, err,
                   kGoldenTolerance));
  CHECK(err <= kGoldenTolerance);  // false for NaN too
}

void run_causal(const std::string& name, const SafetensorsFile& file) {
  long long tokens = 0;
  const HeadLayout layout = layout_from(file, tokens);
  const CausalOptions options = causal_options(file.metadata(), layout);
  const int blocks = mixing_blocks(file);
  const std::vector<float> mixing = file.read_f32("mixing");
  const CausalOperator op(options, MixingWeights::from_learned(mixing, blocks));

  const std::vector<float> q = file.read_f32("q"), k = file.read_f32("k"), v = file.read_f32("v");
  const std::vector<double> expected = file.read_f64("o");

  check_form(name, "parallel", expected, [&](std::vector<float>& o) {
    CausalState state = op.new_state();
    op.parallel(state, q.data(), k.data(), v.data(), tokens, o.data());
  });
  for (const long long chunk : {1LL, 3LL, tokens}) {
    check_form(name, fmt::format("prefill chunk {}", chunk), expected, [&](std::vector<float>& o) {
      CausalState state = op.new_state();
      op.prefill(state, q.data(), k.data(), v.data(), tokens, o.data(), chunk);
    });
  }
  // Separate prefill calls of 3 tokens each, resuming from the state at unaligned positions.
  check_form(name, "prefill calls of 3", expected, [&](std::vector<float>& o) {
    CausalState state = op.new_state();
    const long long hk = layout.heads * layout.dk, gk = layout.kv_heads * layout.dk;
    const long long gv = layout.kv_heads * layout.dv, hv = layout.heads * layout.dv;
    for (long long t = 0; t < tokens; t += 3) {
      const long long n = std::min(3LL, tokens - t);
      op.prefill(state, q.data() + t * hk, k.data() + t * gk, v.data() + t * gv, n, o.data() + t * hv);
    }
  });
  check_form(name, "decode", expected, [&](std::vector<float>& o) {
    CausalState state = op.new_state();
    op.decode(state, q.data(), k.data(), v.data(), tokens, o.data());
  });
}

void run_noncausal(const std::string& name, const SafetensorsFile& file) {
  long long tokens = 0;
  const HeadLayout layout = layout_from(file, tokens);
  const NonCausalOptions options = noncausal_options(file.metadata(), layout);
  const std::vector<float> mixing = file.read_f32("mixing");
  const std::vector<float> q = file.read_f32("q"), k = file.read_f32("k"), v = file.read_f32("v");
  const std::vector<double> expected = file.read_f64("o");
  check_form(name, "noncausal_forward", expected, [&](std::vector<float>& o) {
    noncausal_forward(options, mixing, q.data(), k.data(), v.data(), tokens, o.data());
  });
}

}  // namespace

TEST_CASE("golden cases from the float64 reference match every form", "[golden]") {
  const auto files = golden_files();
  INFO("golden directory: " << MHLA_TEST_DATA_DIR << "/golden");
  REQUIRE_FALSE(files.empty());
  int causal = 0, noncausal = 0;
  for (const auto& path : files) {
    const std::string name = path.stem().string();
    try {
      const SafetensorsFile file = SafetensorsFile::open(path.string());
      const std::string mode = required(file.metadata(), "mode");
      if (mode == "causal") {
        run_causal(name, file);
        ++causal;
      } else if (mode == "noncausal") {
        run_noncausal(name, file);
        ++noncausal;
      } else {
        FAIL_CHECK(fmt::format("golden case {}: unknown mode '{}'", name, mode));
      }
    } catch (const std::exception& e) {
      FAIL_CHECK(fmt::format("golden case {}: {}", name, e.what()));
    }
  }
  CHECK(causal > 0);
  CHECK(noncausal > 0);
}

TEST_CASE("golden cases hold well-formed inputs and non-trivial outputs", "[golden]") {
  for (const auto& path : golden_files()) {
    const std::string name = path.stem().string();
    INFO("golden case " << name);
    const SafetensorsFile file = SafetensorsFile::open(path.string());
    for (const char* t : {"q", "k", "v", "mixing", "o"}) {
      INFO("tensor " << t);
      REQUIRE(file.contains(t));
      CHECK(file.tensor(t).dtype == DType::F32);
      for (const float x : file.read_f32(t)) REQUIRE(std::isfinite(x));
    }
    double norm = 0;
    for (const double x : file.read_f64("o")) norm += x * x;
    CHECK(norm > 0);
  }
}
