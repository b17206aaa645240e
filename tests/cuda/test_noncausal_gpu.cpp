// The CUDA non-causal operator against the CPU form (noncausal_forward) on the same seeded
// inputs: 1-D blocks and grid windows, every feature map, rotary, normalized and not, grouped
// heads, odd widths, fp32, bf16 and fp16, guard zones on both sides of the output, reuse of one
// operator across lengths and mixing matrices, sums past fp16's range, and the CPU form's
// refusals.
//
// Tolerances (relative L2 error over the whole output): fp32 1e-4, far above the few ulps by
// which cuBLAS's and the CPU BLAS's summation orders differ and far below what a wrong index or
// weight gives (O(1)). bf16 1e-2 against the CPU run on the bf16-rounded inputs: the GPU also
// rounds the features, the summaries, their mixture and the weights to bf16 (relative 2^-9 =
// 2e-3 at most each, about 1e-3 rms), and those few roundings stay well under 1e-2. fp16 makes
// the same roundings with 11 significant bits instead of 8: an eighth, 1.25e-3.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>
#include <optional>

#include "device_memory.hpp"
#include "mhla/cuda.hpp"
#include "mhla/error.hpp"
#include "mhla/mixing.hpp"
#include "support/reference.hpp"

using namespace mhla;
using mhla::test::relative_error;

namespace {

// Floats in front of the output the operator must leave alone (the guard after it is
// device_memory.hpp's).
constexpr size_t kFront = 256;

struct Case {
  HeadLayout layout;
  int C = 4;  // 1-D block size, unused with a grid
  std::optional<WindowGrid> grid;
  FeatureMap fm = FeatureMap::relu;
  bool rotary = false;
  bool normalize = true;
  long long T = 0;
};

NonCausalOptions options_of(const Case& c) {
  NonCausalOptions o;
  o.layout = c.layout;
  o.block_size = c.C;
  o.grid = c.grid;
  o.feature_map = c.fm;
  o.rotary = c.rotary;
  o.normalize = c.normalize;
  return o;
}

std::string describe(const Case& c) {
  return fmt::format("H{} Hkv{} dk{} dv{} {} {} rotary={} normalize={} T={}", c.layout.heads, c.layout.kv_heads,
                     c.layout.dk, c.layout.dv,
                     c.grid ? fmt::format("grid {}x{}/{}", c.grid->height, c.grid->width, c.grid->window)
                            : fmt::format("C={}", c.C),
                     to_string(c.fm), c.rotary, c.normalize, c.T);
}

// An fp32 output on the device with a guard before it (NaN) and after it (device_memory.hpp).
class GuardedOutput {
public:
  explicit GuardedOutput(size_t n) : d_(test::poisoned_output(kFront + n)) {}
  float* get() const { return d_.get() + kFront; }
  // The output; fails the test if a guard changed or an element was left unwritten.
  std::vector<float> read() const {
    std::vector<float> h = test::from_device(d_);  // throws if the guard after it changed
    for (size_t i = 0; i < kFront; ++i)
      if (!std::isnan(h[i])) FAIL("the operator wrote before the start of its output");
    h.erase(h.begin(), h.begin() + kFront);
    for (float x : h)
      if (!std::isfinite(x)) FAIL("an output element was left unwritten or is not finite");
    return h;
  }
  // True when nothing of the output or its guards was written.
  bool untouched() const {
    std::vector<float> h = test::from_device(d_);
    for (float x : h)
      if (!std::isnan(x)) return false;
    return true;
  }

private:
  test::Device<float> d_;
};

std::vector<float> cpu_forward(const NonCausalOptions& opt, const std::vector<float>& mixing,
                               const test::CausalInputs& in, long long T) {
  std::vector<float> o(static_cast<size_t>(T) * opt.layout.heads * opt.layout.dv);
  noncausal_forward(opt, mixing, in.q.data(), in.k.data(), in.v.data(), T, o.data());
  return o;
}

template <class E>
std::vector<float> gpu_forward_as(cuda::GpuNonCausalOperator& op, const std::vector<float>& mixing,
                                  const test::CausalInputs& in, long long T) {
  GuardedOutput o(static_cast<size_t>(T) * op.options().layout.heads * op.options().layout.dv);
  auto q = test::to_device<E>(in.q), k = test::to_device<E>(in.k), v = test::to_device<E>(in.v);
  op.forward(mixing, q.get(), k.get(), v.get(), T, o.get());
  op.synchronize();
  return o.read();
}

// The GPU operator on device copies of `in` (rounded to the operator's precision).
std::vector<float> gpu_forward(cuda::GpuNonCausalOperator& op, const std::vector<float>& mixing,
                               const test::CausalInputs& in, long long T) {
  switch (op.precision()) {
    case cuda::Precision::bf16: return gpu_forward_as<__nv_bfloat16>(op, mixing, in, T);
    case cuda::Precision::f16: return gpu_forward_as<__half>(op, mixing, in, T);
    case cuda::Precision::f32: break;
  }
  return gpu_forward_as<float>(op, mixing, in, T);
}

// The inputs as the operator sees them: rounded to its precision.
test::CausalInputs rounded(test::CausalInputs in, cuda::Precision precision) {
  switch (precision) {
    case cuda::Precision::bf16: return test::round_to<__nv_bfloat16>(std::move(in));
    case cuda::Precision::f16: return test::round_to<__half>(std::move(in));
    case cuda::Precision::f32: break;
  }
  return in;
}

double tolerance(cuda::Precision precision) {
  switch (precision) {
    case cuda::Precision::bf16: return 1e-2;
    case cuda::Precision::f16: return test::tolerance_16<__half>(1e-2);
    case cuda::Precision::f32: break;
  }
  return 1e-4;
}

const char* name(cuda::Precision precision) {
  switch (precision) {
    case cuda::Precision::bf16: return "bf16";
    case cuda::Precision::f16: return "fp16";
    case cuda::Precision::f32: break;
  }
  return "fp32";
}

int blocks_of(const Case& c) { return options_of(c).block_count(c.T); }

// Mixing weights as the tests draw them: non-negative when normalized (the denominator stays
// positive), of both signs otherwise (used as given, nothing clamps them).
std::vector<float> random_mixing(std::mt19937_64& rng, const Case& c) {
  const size_t M = static_cast<size_t>(blocks_of(c));
  return test::random_vector(rng, M * M, c.normalize ? 0.0f : -0.5f, 1.0f);
}

void check_case(const Case& c, cuda::Precision precision, std::mt19937_64& rng) {
  INFO(describe(c) << " " << name(precision));
  const auto opt = options_of(c);
  const auto mixing = random_mixing(rng, c);
  const auto in = rounded(test::random_inputs(rng, c.layout, c.T), precision);
  const auto ref = cpu_forward(opt, mixing, in, c.T);
  cuda::GpuNonCausalOperator op(opt, precision);
  const auto out = gpu_forward(op, mixing, in, c.T);
  CHECK(relative_error(out, ref) <= tolerance(precision));
}

}  // namespace

TEST_CASE("GPU non-causal, 1-D blocks: every feature map, rotary, normalized or not, grouped heads, odd widths",
          "[gpu][noncausal]") {
  std::mt19937_64 rng(41);
  // Odd dk (5) leaves rotary out, as the options require; dv 3, 9 and 20 are no powers of two.
  const std::vector<HeadLayout> layouts = {{2, 2, 6, 4}, {4, 2, 5, 3}, {6, 2, 12, 20}, {8, 1, 16, 9}};
  for (const auto& layout : layouts)
    for (auto fm : {FeatureMap::relu, FeatureMap::elu1, FeatureMap::relu_eps, FeatureMap::identity})
      for (bool normalize : {true, false}) {
        if (normalize && fm == FeatureMap::identity) continue;  // refused: see the refusals below
        for (bool rotary : {false, true}) {
          if (rotary && layout.dk % 2 != 0) continue;
          // One block (T = C), a few, and many; C = 1 makes every token its own block.
          for (auto [C, T] : {std::pair{5, 5LL}, std::pair{5, 15LL}, std::pair{3, 63LL}, std::pair{1, 7LL}})
            check_case({layout, C, std::nullopt, fm, rotary, normalize, T}, cuda::Precision::f32, rng);
        }
      }
}

TEST_CASE("GPU non-causal, grid windows: tokens gathered per window and scattered back", "[gpu][noncausal]") {
  std::mt19937_64 rng(42);
  struct GridCase {
    HeadLayout layout;
    WindowGrid grid;
  };
  // 6x9 in 3x3 windows (six blocks, rows of a window far apart), one window covering the whole
  // grid, 1x1 windows, and a non-square grid of 2x2 windows.
  for (const auto& g : {GridCase{{2, 1, 8, 4}, {6, 9, 3}}, GridCase{{4, 2, 6, 10}, {4, 4, 4}},
                        GridCase{{3, 3, 4, 5}, {3, 5, 1}}, GridCase{{4, 1, 10, 7}, {4, 8, 2}}})
    for (auto fm : {FeatureMap::relu, FeatureMap::elu1, FeatureMap::relu_eps})
      for (bool rotary : {false, true})
        for (bool normalize : {true, false}) {
          const Case c{g.layout, 0, g.grid, fm, rotary, normalize,
                       static_cast<long long>(g.grid.height) * g.grid.width};
          check_case(c, cuda::Precision::f32, rng);
        }
  // The distance-derived weights of the DiT code.
  Case c{{2, 2, 8, 8}, 0, WindowGrid{8, 8, 2}, FeatureMap::relu, true, true, 64};
  const auto opt = options_of(c);
  const auto mixing = grid_distance_mixing(*c.grid);
  const auto in = test::random_inputs(rng, c.layout, c.T);
  cuda::GpuNonCausalOperator op(opt, cuda::Precision::f32);
  CHECK(relative_error(gpu_forward(op, mixing, in, c.T), cpu_forward(opt, mixing, in, c.T)) <= 1e-4);
}

TEST_CASE("GPU non-causal in bf16 and fp16 stays within their accuracy of the CPU on rounded inputs",
          "[gpu][noncausal][bf16][f16]") {
  std::mt19937_64 rng(43);
  // The 340M head layout with C 64, grouped heads with widths off the powers of two, a grid.
  const std::vector<Case> cases = {
      {{4, 4, 128, 256}, 64, std::nullopt, FeatureMap::relu, true, true, 64 * 9},
      {{4, 4, 128, 256}, 64, std::nullopt, FeatureMap::relu, false, false, 64},
      {{8, 2, 32, 48}, 16, std::nullopt, FeatureMap::elu1, true, true, 16 * 13},
      {{6, 3, 24, 20}, 8, std::nullopt, FeatureMap::relu_eps, false, true, 8 * 7},
      {{4, 2, 12, 9}, 5, std::nullopt, FeatureMap::identity, true, false, 5 * 6},
      {{4, 1, 16, 32}, 0, WindowGrid{8, 12, 4}, FeatureMap::relu, true, true, 96},
  };
  for (auto precision : {cuda::Precision::bf16, cuda::Precision::f16})
    for (const auto& c : cases) check_case(c, precision, rng);
}

// With keys and values of one sign, a block's summary sums C tokens alike and an all-ones mixing
// (plain non-causal linear attention) sums every block: one block of 4096 tokens, or 64 blocks
// mixed by ones, reach about 8e4 per element, past fp16's 65504, in S or in P = W S.
TEST_CASE("GPU non-causal in fp16: summaries and mixtures that pass the fp16 range", "[gpu][noncausal][f16]") {
  std::mt19937_64 rng(46);
  for (const auto& [C, normalize] : {std::pair{4096, false}, std::pair{64, true}}) {
    const Case c{{2, 1, 16, 16}, C, std::nullopt, FeatureMap::relu, false, normalize, 4096};
    INFO(describe(c));
    const auto opt = options_of(c);
    const auto M = static_cast<size_t>(blocks_of(c));
    const std::vector<float> mixing(M * M, 1.0f);
    auto in = test::random_inputs(rng, c.layout, c.T, 0.0f);
    for (auto& x : in.v) x = 40.0f * (x + 1.0f);  // [0, 80]
    in = rounded(std::move(in), cuda::Precision::f16);
    cuda::GpuNonCausalOperator op(opt, cuda::Precision::f16);
    CHECK(relative_error(gpu_forward(op, mixing, in, c.T), cpu_forward(opt, mixing, in, c.T)) <=
          tolerance(cuda::Precision::f16));
  }
}

TEST_CASE("one GPU non-causal operator serves many lengths and mixing matrices in turn", "[gpu][noncausal]") {
  std::mt19937_64 rng(44);
  for (auto precision : {cuda::Precision::f32, cuda::Precision::bf16, cuda::Precision::f16}) {
    INFO(name(precision));
    Case c{{4, 2, 8, 6}, 4, std::nullopt, FeatureMap::elu1, true, true, 0};
    const auto opt = options_of(c);
    cuda::GpuNonCausalOperator op(opt, precision);
    // Growing, shrinking, the same length with a new matrix, then the first matrix again.
    c.T = 12;
    const auto first = random_mixing(rng, c);
    for (long long T : {12LL, 40LL, 8LL, 8LL, 12LL}) {
      c.T = T;
      INFO("T=" << T);
      const auto mixing = T == 12 ? first : random_mixing(rng, c);
      const auto in = rounded(test::random_inputs(rng, c.layout, T), precision);
      CHECK(relative_error(gpu_forward(op, mixing, in, T), cpu_forward(opt, mixing, in, T)) <= tolerance(precision));
    }
  }
}

TEST_CASE("GPU non-causal from host memory and on the caller's stream", "[gpu][noncausal]") {
  std::mt19937_64 rng(45);
  const Case c{{4, 2, 10, 6}, 0, WindowGrid{4, 6, 2}, FeatureMap::relu, true, true, 24};
  const auto opt = options_of(c);
  const auto mixing = random_mixing(rng, c);
  const auto in = test::random_inputs(rng, c.layout, c.T);
  const auto ref = cpu_forward(opt, mixing, in, c.T);
  for (auto precision : {cuda::Precision::f32, cuda::Precision::bf16, cuda::Precision::f16}) {
    INFO(name(precision));
    cuda::GpuNonCausalOperator op(opt, precision);
    std::vector<float> o(ref.size(), std::nanf(""));
    op.forward_host(mixing, in.q.data(), in.k.data(), in.v.data(), c.T, o.data());
    // The inputs are rounded on the device: compare with the CPU on rounded inputs.
    CHECK(relative_error(o, cpu_forward(opt, mixing, rounded(in, precision), c.T)) <= tolerance(precision));
  }
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  {
    cuda::GpuNonCausalOperator op(opt, cuda::Precision::f32);
    op.set_stream(stream);
    auto q = test::to_device<float>(in.q), k = test::to_device<float>(in.k), v = test::to_device<float>(in.v);
    GuardedOutput o(ref.size());
    op.forward(mixing, q.get(), k.get(), v.get(), c.T, o.get());
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    CHECK(relative_error(o.read(), ref) <= 1e-4);
  }
  cudaStreamDestroy(stream);
}

TEST_CASE("the GPU non-causal operator refuses what the CPU form refuses, before any work", "[gpu][noncausal]") {
  NonCausalOptions opt;
  opt.layout = {2, 1, 4, 4};
  opt.block_size = 4;
  cuda::GpuNonCausalOperator op(opt, cuda::Precision::f32);
  test::Device<float> x(64);
  GuardedOutput o(64);
  const std::vector<float> m2(4, 0.5f);
  // Partial blocks: a length off the block size, a single partial block, no tokens.
  CHECK_THROWS_WITH(op.forward(m2, x.get(), x.get(), x.get(), 7, o.get()), Catch::Contains("multiple of the block size"));
  CHECK_THROWS_WITH(op.forward(std::vector<float>(1, 0.5f), x.get(), x.get(), x.get(), 3, o.get()),
                    Catch::Contains("multiple of the block size"));
  CHECK_THROWS_AS(op.forward(m2, x.get(), x.get(), x.get(), 0, o.get()), Error);
  CHECK_THROWS_WITH(op.forward(std::vector<float>(3, 0.5f), x.get(), x.get(), x.get(), 8, o.get()),
                    Catch::Contains("2x2"));
  const std::vector<float> nan_entry = {1.0f, 0.0f, std::nanf(""), 1.0f};
  CHECK_THROWS_WITH(op.forward(nan_entry, x.get(), x.get(), x.get(), 8, o.get()), Catch::Contains("finite"));
  CHECK_THROWS_WITH(op.forward(m2, nullptr, x.get(), x.get(), 8, o.get()), Catch::Contains("must all be given"));
  CHECK_THROWS_WITH(op.forward(m2, x.get(), x.get(), x.get(), 8, nullptr), Catch::Contains("must all be given"));
  CHECK_THROWS_WITH(op.forward_host(m2, nullptr, nullptr, nullptr, 8, nullptr), Catch::Contains("must all be given"));
  op.synchronize();
  CHECK(o.untouched());

  // Options the CPU form refuses, refused when the operator is made.
  auto refused = [](NonCausalOptions bad, const char* expect) {
    INFO(expect);
    CHECK_THROWS_AS(cuda::GpuNonCausalOperator(bad, cuda::Precision::bf16), Error);
    CHECK_THROWS_AS(cuda::GpuNonCausalOperator(bad, cuda::Precision::f16), Error);
    CHECK_THROWS_WITH(cuda::GpuNonCausalOperator(bad, cuda::Precision::f32), Catch::Contains(expect));
  };
  NonCausalOptions bad = opt;
  bad.feature_map = FeatureMap::identity;
  refused(bad, "non-negative feature map");
  bad = opt;
  bad.rotary = true;
  bad.layout.dk = 5;
  refused(bad, "even");
  bad = opt;
  bad.layout.heads = 3;
  bad.layout.kv_heads = 2;
  refused(bad, "multiple");
  bad = opt;
  bad.block_size = 0;
  refused(bad, "block size");
  bad = opt;
  bad.grid = WindowGrid{4, 6, 4};
  refused(bad, "whole 4x4 windows");
  bad = opt;
  bad.eps = -1.0f;
  refused(bad, "eps");

  // A grid takes exactly its own number of tokens.
  NonCausalOptions g = opt;
  g.grid = WindowGrid{4, 4, 2};
  cuda::GpuNonCausalOperator gop(g, cuda::Precision::f32);
  CHECK_THROWS_WITH(gop.forward(std::vector<float>(16, 0.5f), x.get(), x.get(), x.get(), 12, o.get()),
                    Catch::Contains("holds 16 tokens"));
  CHECK(o.untouched());
}
