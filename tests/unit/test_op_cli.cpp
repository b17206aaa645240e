// Drives the `mhla op` command line end to end: inputs written to a temp dir, the binary run
// through the shell, its output file, stdout, stderr and exit status checked.
#include <catch2/catch.hpp>
#include <sys/wait.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "mhla/device.hpp"
#include "mhla/safetensors.hpp"
#include "support/cli.hpp"
#include "support/reference.hpp"

using namespace mhla;
namespace fs = std::filesystem;

namespace {

using test::Run;
using test::TempDir;
using test::run_cli;
using test::slurp;

// The usual arguments of one op run.
std::string op_args(const std::string& in, const std::string& out, const std::string& mode,
                    const std::string& extra = "") {
  return "op --input '" + in + "' --output '" + out + "' --mode " + mode + " " + extra;
}

struct Problem {
  HeadLayout layout;
  long long tokens = 0;
  int mixing_side = 0;
  std::vector<float> q, k, v, mixing;
};

Problem random_problem(HeadLayout layout, long long tokens, int mixing_side, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Problem p{layout, tokens, mixing_side, {}, {}, {}, {}};
  const auto inputs = test::random_inputs(rng, layout, tokens);
  p.q = inputs.q;
  p.k = inputs.k;
  p.v = inputs.v;
  // Learned values partly outside [1e-5, 1], so the clamp matters.
  p.mixing = test::random_vector(rng, static_cast<size_t>(mixing_side) * mixing_side, -0.5f, 1.5f);
  return p;
}

// The non-causal form uses its mixing as given: nonnegative weights keep the normalizer positive.
Problem noncausal_problem(HeadLayout layout, long long tokens, int blocks, uint64_t seed) {
  Problem p = random_problem(layout, tokens, blocks, seed);
  for (auto& w : p.mixing) w = std::fabs(w);
  return p;
}

void write_problem(const std::string& path, const Problem& p) {
  const auto& L = p.layout;
  write_safetensors(path, {{"q", {{p.tokens, L.heads, L.dk}, p.q}},
                           {"k", {{p.tokens, L.kv_heads, L.dk}, p.k}},
                           {"v", {{p.tokens, L.kv_heads, L.dv}, p.v}},
                           {"mixing", {{p.mixing_side, p.mixing_side}, p.mixing}}});
}

// Reads `o` and checks its shape.
std::vector<float> read_output(const std::string& path, const Problem& p) {
  const auto f = SafetensorsFile::open(path);
  CHECK(f.tensor("o").shape == std::vector<int64_t>{p.tokens, p.layout.heads, p.layout.dv});
  return f.read_f32("o");
}

// The one summary line of a successful run.
void check_summary(const Run& r, const std::string& mode, bool causal) {
  INFO(r.err);
  CHECK(r.status == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK_THAT(r.err, Catch::Contains("mode=" + mode) && Catch::Contains("time="));
  CHECK((r.err.find("state=") != std::string::npos) == causal);
}

// Encodes values exactly representable in the target dtype (the test picks them so).
std::string encode(DType dtype, const std::vector<float>& values) {
  std::string out;
  const auto put = [&](uint64_t bits, int bytes) {
    for (int i = 0; i < bytes; ++i) out += static_cast<char>(bits >> (8 * i));
  };
  for (float x : values) {
    if (dtype == DType::F64) put(std::bit_cast<uint64_t>(static_cast<double>(x)), 8);
    if (dtype == DType::F32) put(std::bit_cast<uint32_t>(x), 4);
    if (dtype == DType::BF16) put(std::bit_cast<uint32_t>(x) >> 16, 2);
    if (dtype == DType::F16) {
      int e = 0;
      const float m = std::frexp(std::fabs(x), &e);  // |x| = m 2^e, m in [0.5, 1)
      const uint64_t sign = std::signbit(x) ? 0x8000 : 0;
      put(x == 0 ? sign : sign | static_cast<uint64_t>(e + 14) << 10 | static_cast<uint64_t>((2 * m - 1) * 1024), 2);
    }
  }
  return out;
}

struct TypedTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// A safetensors file with the given dtypes, laid out by hand.
void write_typed(const std::string& path, const std::map<std::string, TypedTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    const std::string bytes = encode(t.dtype, t.values);
    header[name] = {{"dtype", std::string(to_string(t.dtype))},
                    {"shape", t.shape},
                    {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
  }
  const std::string text = header.dump();
  std::string len(8, '\0');
  for (size_t i = 0; i < 8; ++i) len[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  std::ofstream(path, std::ios::binary) << len << text << data;
}

// Multiples of 1/8 in [-1, 1]: exact in F16, BF16, F32 and F64.
std::vector<float> eighths(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(-8, 8);
  std::vector<float> out(n);
  for (auto& x : out) x = static_cast<float>(d(rng)) / 8.0f;
  return out;
}

// An error run: status 1, exactly one line on stderr starting "mhla: error:", no output file.
void check_error(const Run& r, const std::string& output, const std::string& expect) {
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.rfind("mhla: error:", 0) == 0);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  CHECK(r.err.back() == '\n');
  CHECK_THAT(r.err, Catch::Contains(expect));
  CHECK_FALSE(fs::exists(output));
}

}  // namespace

TEST_CASE("mhla op: the three causal forms agree and match the float64 reference", "[op-cli]") {
  TempDir dir;
  const HeadLayout layout{4, 2, 8, 6};
  const Problem p = random_problem(layout, 23, 6, 11);  // 23 tokens: a partial last block of 4
  const std::string in = dir.file("in.safetensors");
  write_problem(in, p);

  const auto par = run_cli(dir, op_args(in, dir.file("par.safetensors"), "causal-parallel", "--block-size 4"));
  check_summary(par, "causal-parallel", true);
  const auto chk = run_cli(dir, op_args(in, dir.file("chk.safetensors"), "causal-chunked", "--block-size 4 --chunk 7"));
  check_summary(chk, "causal-chunked", true);
  const auto rec = run_cli(dir, op_args(in, dir.file("rec.safetensors"), "causal-recurrent", "--block-size 4"));
  check_summary(rec, "causal-recurrent", true);
  CHECK_THAT(par.err, Catch::Contains("T=23 H=4 Hkv=2 dk=8 dv=6"));

  const auto o_par = read_output(dir.file("par.safetensors"), p);
  const auto o_chk = read_output(dir.file("chk.safetensors"), p);
  const auto o_rec = read_output(dir.file("rec.safetensors"), p);
  CHECK(test::relative_error(o_chk, o_par) < 1e-5);
  CHECK(test::relative_error(o_rec, o_par) < 1e-5);

  CausalOptions opt;
  opt.layout = layout;
  opt.block_size = 4;
  const auto ref = test::reference_causal(opt, MixingWeights::from_learned(p.mixing, 6), p.q, p.k, p.v, p.tokens);
  CHECK(test::relative_error(o_par, ref) < 1e-5);
}

TEST_CASE("mhla op --reference prints the relative error", "[op-cli]") {
  TempDir dir;
  const Problem p = random_problem({2, 1, 4, 4}, 10, 3, 12);
  const std::string in = dir.file("in.safetensors"), ref = dir.file("ref.safetensors");
  write_problem(in, p);
  REQUIRE(run_cli(dir, op_args(in, ref, "causal-recurrent", "--block-size 4")).status == 0);

  const auto r = run_cli(dir, op_args(in, dir.file("o.safetensors"), "causal-chunked",
                                      "--block-size 4 --chunk 3 --reference '" + ref + "'"));
  check_summary(r, "causal-chunked", true);
  const std::string prefix = "relative error vs reference: ";
  REQUIRE(r.out.rfind(prefix, 0) == 0);
  CHECK(std::stod(r.out.substr(prefix.size())) < 1e-5);

  // Against a different reference the error is large.
  write_safetensors(ref, {{"o", {{10, 2, 4}, std::vector<float>(80, 1.0f)}}});
  const auto far = run_cli(dir, op_args(in, dir.file("o2.safetensors"), "causal-parallel",
                                        "--block-size 4 --reference '" + ref + "'"));
  REQUIRE(far.out.rfind(prefix, 0) == 0);
  CHECK(std::stod(far.out.substr(prefix.size())) > 0.1);
}

TEST_CASE("mhla op noncausal runs with 1-D blocks and with grid windows", "[op-cli]") {
  TempDir dir;
  const HeadLayout layout{2, 2, 4, 3};
  const Problem p = noncausal_problem(layout, 16, 4, 13);
  const std::string in = dir.file("in.safetensors");
  write_problem(in, p);

  const auto blocks = run_cli(dir, op_args(in, dir.file("b.safetensors"), "noncausal", "--block-size 4"));
  check_summary(blocks, "noncausal", false);
  NonCausalOptions opt;
  opt.layout = layout;
  opt.block_size = 4;
  CHECK(test::relative_error(read_output(dir.file("b.safetensors"), p),
                             test::reference_noncausal(opt, p.mixing, p.q, p.k, p.v, p.tokens)) < 1e-5);

  const auto grid = run_cli(dir, op_args(in, dir.file("g.safetensors"), "noncausal", "--grid 4,4 --window 2"));
  check_summary(grid, "noncausal", false);
  opt.grid = WindowGrid{4, 4, 2};
  CHECK(test::relative_error(read_output(dir.file("g.safetensors"), p),
                             test::reference_noncausal(opt, p.mixing, p.q, p.k, p.v, p.tokens)) < 1e-5);
}

TEST_CASE("mhla op noncausal --device: cpu and auto match the reference, cuda needs a GPU", "[op-cli]") {
  TempDir dir;
  const HeadLayout layout{4, 2, 6, 5};
  const Problem p = noncausal_problem(layout, 24, 6, 19);
  const std::string in = dir.file("in.safetensors");
  write_problem(in, p);
  NonCausalOptions opt;
  opt.layout = layout;
  opt.block_size = 4;
  opt.rotary = true;
  const auto ref = test::reference_noncausal(opt, p.mixing, p.q, p.k, p.v, p.tokens);
  const std::string gpu = cuda_available() ? "cuda" : "cpu";
  for (const std::string device : {"cpu", "auto", "cuda"}) {
    INFO(device);
    const std::string out = dir.file(device + ".safetensors");
    const auto r = run_cli(dir, op_args(in, out, "noncausal", "--block-size 4 --rotary --device " + device));
    if (device == "cuda" && !cuda_available()) {
      check_error(r, out, "CUDA");
      continue;
    }
    check_summary(r, "noncausal", false);
    CHECK_THAT(r.err, Catch::Contains("device=" + (device == "cpu" ? std::string("cpu") : gpu)));
    CHECK(test::relative_error(read_output(out, p), ref) < 1e-5);
  }
}

TEST_CASE("mhla op options reach the operator", "[op-cli]") {
  TempDir dir;
  const HeadLayout layout{2, 1, 4, 3};
  Problem p = random_problem(layout, 14, 3, 14);  // 14 tokens past a window of 3 blocks of 2
  const std::string in = dir.file("in.safetensors");
  write_problem(in, p);
  const auto r = run_cli(dir, op_args(in, dir.file("o.safetensors"), "causal-chunked",
                                      "--block-size 2 --chunk 5 --policy slide_mean --feature-map elu1 --rotary "
                                      "--rotary-base 500 --normalize --scale 0.7 --eps 1e-3"));
  check_summary(r, "causal-chunked", true);

  CausalOptions opt;
  opt.layout = layout;
  opt.block_size = 2;
  opt.policy = ContextPolicy::slide_mean;
  opt.feature_map = FeatureMap::elu1;
  opt.rotary = true;
  opt.rotary_base = 500;
  opt.normalize = true;
  opt.scale = 0.7f;
  opt.eps = 1e-3f;
  const auto ref = test::reference_causal(opt, MixingWeights::from_learned(p.mixing, 3), p.q, p.k, p.v, p.tokens);
  CHECK(test::relative_error(read_output(dir.file("o.safetensors"), p), ref) < 1e-5);
}

TEST_CASE("mhla op reads F16, BF16 and F64 inputs", "[op-cli]") {
  TempDir dir;
  const HeadLayout layout{2, 1, 4, 3};
  Problem p{layout, 8, 2, eighths(64, 1), eighths(32, 2), eighths(24, 3), {1.0f, 0.0f, 0.5f, 0.5f}};
  const std::string typed = dir.file("typed.safetensors"), plain = dir.file("plain.safetensors");
  write_typed(typed, {{"q", {DType::F16, {8, 2, 4}, p.q}},
                      {"k", {DType::BF16, {8, 1, 4}, p.k}},
                      {"v", {DType::F64, {8, 1, 3}, p.v}},
                      {"mixing", {DType::BF16, {2, 2}, p.mixing}}});
  write_problem(plain, p);
  const auto a = run_cli(dir, op_args(typed, dir.file("a.safetensors"), "causal-parallel", "--block-size 4"));
  const auto b = run_cli(dir, op_args(plain, dir.file("b.safetensors"), "causal-parallel", "--block-size 4"));
  check_summary(a, "causal-parallel", true);
  check_summary(b, "causal-parallel", true);
  CHECK(read_output(dir.file("a.safetensors"), p) == read_output(dir.file("b.safetensors"), p));
}

TEST_CASE("mhla op --help documents every flag", "[op-cli]") {
  TempDir dir;
  const auto r = run_cli(dir, "op --help");
  CHECK(r.status == 0);
  for (const char* flag : {"--input", "--output", "--mode", "--chunk", "--block-size", "--grid", "--window",
                           "--feature-map", "--rotary", "--rotary-base", "--scale", "--normalize", "--eps", "--policy",
                           "--reference", "--device", "causal-parallel", "causal-chunked", "causal-recurrent", "noncausal",
                           "slide_mean", "relu_eps", "no scale"})
    CHECK_THAT(r.out, Catch::Contains(flag));
}

TEST_CASE("mhla op rejects bad input files with one error line", "[op-cli]") {
  TempDir dir;
  const auto shaped = [](std::vector<int64_t> s) {
    int64_t n = 1;
    for (auto d : s) n *= d;
    return TensorToWrite{s, std::vector<float>(static_cast<size_t>(n), 0.25f)};
  };
  const TensorToWrite good_q = shaped({8, 2, 4}), good_k = shaped({8, 1, 4}), good_v = shaped({8, 1, 3}),
                      good_m = {{2, 2}, {0.5f, 0.f, 0.5f, 0.5f}};
  struct Case {
    const char* what;
    std::map<std::string, TensorToWrite> tensors;
    std::string mode, extra, expect;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Case> cases = {
      {"missing tensor", {{"q", good_q}, {"k", good_k}, {"mixing", good_m}}, "causal-parallel", "", "'v'"},
      {"q of rank 2", {{"q", shaped({8, 8})}, {"k", good_k}, {"v", good_v}, {"mixing", good_m}}, "causal-parallel", "",
       "[T, H, dk]"},
      {"T differs", {{"q", good_q}, {"k", shaped({7, 1, 4})}, {"v", good_v}, {"mixing", good_m}}, "causal-parallel",
       "", "same token count"},
      {"dk differs", {{"q", good_q}, {"k", shaped({8, 1, 5})}, {"v", good_v}, {"mixing", good_m}}, "causal-parallel",
       "", "same width dk"},
      {"Hkv differs", {{"q", good_q}, {"k", good_k}, {"v", shaped({8, 2, 3})}, {"mixing", good_m}}, "causal-parallel",
       "", "same number of heads"},
      {"H not a multiple of Hkv",
       {{"q", shaped({8, 3, 4})}, {"k", shaped({8, 2, 4})}, {"v", shaped({8, 2, 3})}, {"mixing", good_m}},
       "causal-parallel", "", "multiple"},
      {"T = 0", {{"q", shaped({0, 2, 4})}, {"k", shaped({0, 1, 4})}, {"v", shaped({0, 1, 3})}, {"mixing", good_m}},
       "causal-parallel", "", "no tokens"},
      {"mixing not square", {{"q", good_q}, {"k", good_k}, {"v", good_v}, {"mixing", shaped({2, 3})}},
       "causal-parallel", "", "square"},
      {"mixing of rank 1", {{"q", good_q}, {"k", good_k}, {"v", good_v}, {"mixing", shaped({4})}}, "noncausal",
       "--block-size 4", "square"},
      {"NaN in causal mixing", {{"q", good_q}, {"k", good_k}, {"v", good_v}, {"mixing", {{2, 2}, {1, 0, nan, 1}}}},
       "causal-recurrent", "", "finite"},
      {"NaN in noncausal mixing", {{"q", good_q}, {"k", good_k}, {"v", good_v}, {"mixing", {{2, 2}, {1, 0, nan, 1}}}},
       "noncausal", "--block-size 4", "finite"},
  };
  const std::string out = dir.file("out.safetensors");
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string in = dir.file("in.safetensors");
    write_safetensors(in, c.tensors);
    check_error(run_cli(dir, op_args(in, out, c.mode, c.extra)), out, c.expect);
  }
}

TEST_CASE("mhla op rejects unreadable files and missing directories with one error line", "[op-cli]") {
  TempDir dir;
  const Problem p = random_problem({2, 1, 4, 3}, 8, 2, 16);
  const std::string in = dir.file("in.safetensors"), out = dir.file("out.safetensors");
  write_problem(in, p);
  std::ofstream(dir.file("garbage.safetensors")) << "this is not a safetensors file at all";
  fs::create_directory(dir.file("adir"));
  write_safetensors(dir.file("no_o.safetensors"), {{"x", {{1}, {1}}}});
  write_safetensors(dir.file("short_o.safetensors"), {{"o", {{3}, {1, 2, 3}}}});

  check_error(run_cli(dir, op_args(dir.file("absent.safetensors"), out, "causal-parallel")), out, "absent.safetensors");
  check_error(run_cli(dir, op_args(dir.file("garbage.safetensors"), out, "causal-parallel")), out, "garbage");
  check_error(run_cli(dir, op_args(dir.file("adir"), out, "causal-parallel")), out, "not a regular file");
  const std::string lost = dir.file("missing/out.safetensors");
  check_error(run_cli(dir, op_args(in, lost, "causal-parallel")), lost, "does not exist");
  check_error(run_cli(dir, op_args(in, out, "causal-parallel", "--reference '" + dir.file("no_o.safetensors") + "'")),
              out, "'o'");
  check_error(
      run_cli(dir, op_args(in, out, "causal-parallel", "--reference '" + dir.file("short_o.safetensors") + "'")), out,
      "reference");
}

namespace {

struct FlagCase {
  std::string mode, extra, expect;
};

// Runs each case on a small valid input (T = 8, H = 2, Hkv = 1, dk = 4, dv = 3, L = 2).
void check_flag_errors(const std::vector<FlagCase>& cases) {
  TempDir dir;
  const std::string in = dir.file("in.safetensors"), out = dir.file("out.safetensors");
  write_problem(in, random_problem({2, 1, 4, 3}, 8, 2, 17));
  for (const auto& c : cases) {
    INFO(c.mode << " " << c.extra);
    check_error(run_cli(dir, op_args(in, out, c.mode, c.extra)), out, c.expect);
  }
}

}  // namespace

TEST_CASE("mhla op rejects bad flag values with one error line", "[op-cli]") {
  check_flag_errors({
      {"causal-parallel", "--bogus", "--bogus"},
      {"causal-chunked", "--chunk 0", "--chunk"},
      {"causal-parallel", "--chunk 4", "--chunk applies only"},
      {"causal-parallel", "--block-size -1", "--block-size"},
      {"causal-parallel", "--policy bogus", "bogus"},
      {"causal-parallel", "--feature-map gelu", "gelu"},
      {"bogus", "", "bogus"},
      {"causal-parallel", "--eps -1", "--eps"},
  });
}

TEST_CASE("mhla op rejects flags that do not fit the mode or the input with one error line", "[op-cli]") {
  check_flag_errors({
      {"causal-parallel", "--normalize --feature-map identity", "identity"},
      {"noncausal", "--block-size 4 --feature-map identity", "identity"},
      {"noncausal", "--block-size 2", "4x4"},
      {"noncausal", "--block-size 3", "multiple of the block size"},
      {"noncausal", "--grid 3,3 --window 1", "holds 9 tokens"},
      {"noncausal", "--grid 2,4 --window 3", "whole"},
      {"noncausal", "--grid 2x4 --window 2", "H,W"},
      {"noncausal", "--grid 2,4", "--window"},
      {"noncausal", "--window 2", "--grid"},
      {"noncausal", "--block-size 4 --policy slide", "--policy"},
      {"noncausal", "--block-size 4 --device tpu", "tpu"},
      {"causal-parallel", "--device cpu", "--device applies only"},
      {"causal-parallel", "--grid 2,4 --window 2", "noncausal"},
      {"causal-parallel", "--rotary-base 100", "--rotary"},
      // 8 tokens past the trained window of 2 blocks of 2 under the strict policy.
      {"causal-chunked", "--block-size 2", "trained window"},
      {"causal-recurrent", "--block-size 2 --policy strict", "trained window"},
  });
}

TEST_CASE("mhla op needs --mode and goes past the window only under a sliding policy", "[op-cli]") {
  TempDir dir;
  const std::string in = dir.file("in.safetensors"), out = dir.file("out.safetensors");
  write_problem(in, random_problem({2, 1, 4, 3}, 8, 2, 18));
  check_error(run_cli(dir, "op --input '" + in + "' --output '" + out + "'"), out, "--mode");
  check_error(run_cli(dir, ""), out, "subcommand");
  CHECK(run_cli(dir, op_args(in, out, "causal-recurrent", "--block-size 2 --policy slide")).status == 0);
}
