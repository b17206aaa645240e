// The fused small-batch products against float64 sums of the same math: every epilogue, fp32,
// bf16 and fp16, batches of 1 to 8 rows, sizes that leave partial tiles and partial passes over
// K, with and without the RMSNorm in front, a residual stream past fp16's range; guard zones
// after every output; repeated launches and graph replays give the same bits; unsupported calls
// are refused.
//
// Tolerances: in fp32 only the order of the fp32 sums differs from the reference (about 1e-7
// relative). In bf16 the reference takes the same rounded weights and inputs, so fp32 outputs
// stay close to it too; outputs in bf16 add one rounding (2^-9 relative), hence 1e-2. Outputs
// in fp16 add one rounding to 11 significant bits instead of 8: an eighth, 1.25e-3.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "cuda/small_batch.cuh"
#include "device_memory.hpp"
#include "mhla/error.hpp"
#include "support/reference.hpp"

using namespace mhla;
using cuda::SmallBatchArgs;
using cuda::SmallBatchEpilogue;
using test::relative_error;

namespace {

constexpr float kEps = 1e-5f;

template <class T>
constexpr bool k16Bit = !std::is_same_v<T, float>;

template <class T>
float to_float(T x) {
  return cuda::host_float(x);
}

template <class T>
T from_float(float x) {
  return cuda::host_cast<T>(x);
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, __half> ? "fp16" : k16Bit<T> ? "bf16" : "f32";
}

// The tolerance of outputs in T (see the top of the file).
template <class T>
double tolerance_t() {
  if constexpr (k16Bit<T>)
    return test::tolerance_16<T>(1e-2);
  else
    return 1e-5;
}

// A device buffer holding `values` in T, then sentinel guards.
template <class T>
test::Device<T> guarded(const std::vector<float>& values) {
  test::Device<T> d(values.size());
  std::vector<T> h(values.size() + test::kGuard, from_float<T>(test::kSentinel));
  for (size_t i = 0; i < values.size(); ++i) h[i] = from_float<T>(values[i]);
  REQUIRE(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return d;
}

template <class T>
test::Device<T> poisoned(size_t n) {
  return guarded<T>(std::vector<float>(n, std::nanf("")));
}

// The buffer's values; fails the test if a guard changed.
template <class T>
std::vector<float> fetch(const test::Device<T>& d) {
  std::vector<T> h(d.size() + test::kGuard);
  REQUIRE(cudaMemcpy(h.data(), d.get(), h.size() * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  for (size_t i = d.size(); i < h.size(); ++i) REQUIRE(to_float(h[i]) == to_float(from_float<T>(test::kSentinel)));
  std::vector<float> out(d.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = to_float(h[i]);
  return out;
}

// The float64 reference: y[b][n] = scale[b] * sum_k W[n][k] h[b][k], with h what the kernel
// stages (the rows in T, or x * norm_weight rounded to T) and scale[b] the RMSNorm's row scale
// (1 without the norm). In fp16 the kernel stages 2^e x * norm_weight, 2^e the power of two at
// or below the row scale, which rounds as x * norm_weight does but for fp16's range: the
// reference takes the same (should its 2^e differ from the kernel's, by a factor of two at a
// boundary, the rounding is still the same).
struct Problem {
  int B, N, K;
  bool norm;
  std::vector<float> w, x, norm_weight, in;
  std::vector<double> y;
};

// `x_max`: the residual rows x are drawn from [-x_max, x_max].
template <class T>
Problem make_problem(std::mt19937_64& rng, int B, int N, int K, bool norm, float x_max = 2.0f) {
  Problem p{B, N, K, norm, test::round_to<T>(test::random_vector(rng, static_cast<size_t>(N) * K)), {}, {}, {}, {}};
  std::vector<double> h(static_cast<size_t>(B) * K), scale(B, 1.0);
  if (norm) {
    p.x = test::random_vector(rng, h.size(), -x_max, x_max);
    p.norm_weight = test::random_vector(rng, K, 0.5f, 1.5f);
    for (int b = 0; b < B; ++b) {
      double ss = 0;
      for (int k = 0; k < K; ++k) ss += static_cast<double>(p.x[b * K + k]) * p.x[b * K + k];
      scale[b] = 1.0 / std::sqrt(ss / K + kEps);
      float staged = 1.0f;  // the power of two the rows are staged with
      if constexpr (std::is_same_v<T, __half>) {
        int e = 0;
        std::frexp(scale[b], &e);
        staged = std::ldexp(1.0f, e - 1);
        scale[b] /= staged;
      }
      for (int k = 0; k < K; ++k) {
        const float x = p.x[b * K + k];
        h[b * K + k] = k16Bit<T> ? to_float(from_float<T>(x * staged * p.norm_weight[k]))
                                 : static_cast<double>(x) * p.norm_weight[k];
      }
    }
  } else {
    p.in = test::round_to<T>(test::random_vector(rng, h.size()));
    std::copy(p.in.begin(), p.in.end(), h.begin());
  }
  p.y.assign(static_cast<size_t>(B) * N, 0.0);
  for (int b = 0; b < B; ++b)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += static_cast<double>(p.w[static_cast<size_t>(n) * K + k]) * h[b * K + k];
      p.y[b * N + n] = scale[b] * s;
    }
  return p;
}

// The problem's inputs on the device and the arguments that read them.
template <class T>
struct Inputs {
  test::Device<T> w, in;
  test::Device<float> x, norm_weight;
  SmallBatchArgs<T> args;

  explicit Inputs(const Problem& p)
      : w(test::to_device<T>(p.w)), in(test::to_device<T>(p.in)), x(test::to_device<float>(p.x)),
        norm_weight(test::to_device<float>(p.norm_weight)) {
    args.batch = p.B;
    args.n = p.N;
    args.k = p.K;
    args.w = w.get();
    if (p.norm) {
      args.x = x.get();
      args.norm_weight = norm_weight.get();
      args.eps = kEps;
    } else {
      args.in = in.get();
    }
  }
};

template <class T>
void run(const SmallBatchArgs<T>& a) {
  cuda::small_batch_gemv(a, nullptr);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

// Columns [from, to) of the [B][N] rows.
std::vector<double> columns(const std::vector<double>& y, int B, int N, int from, int to) {
  std::vector<double> out;
  for (int b = 0; b < B; ++b) out.insert(out.end(), y.begin() + b * N + from, y.begin() + b * N + to);
  return out;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

template <class T>
void check_epilogue(SmallBatchEpilogue epilogue, const Problem& p, std::mt19937_64& rng) {
  const double tol_t = tolerance_t<T>(), tol_f32 = 1e-5;
  Inputs<T> d(p);
  auto a = d.args;
  a.epilogue = epilogue;
  const size_t all = p.y.size();
  switch (epilogue) {
    case SmallBatchEpilogue::store_t: {
      auto out = poisoned<T>(all);
      a.out_t = out.get();
      run(a);
      CHECK(relative_error(fetch(out), p.y) <= tol_t);
      break;
    }
    case SmallBatchEpilogue::store_f32: {
      auto out = test::poisoned_output(all);
      a.out_f32 = out.get();
      run(a);
      CHECK(relative_error(test::from_device(out), p.y) <= tol_f32);
      break;
    }
    case SmallBatchEpilogue::add_f32: {
      // What was there has the products' size, so an overwrite would be far off.
      double rms = 0;
      for (double v : p.y) rms += v * v;
      rms = std::sqrt(rms / all);
      auto before = test::random_vector(rng, all);
      for (auto& v : before) v = static_cast<float>(v * rms);
      std::vector<double> want(all);
      for (size_t i = 0; i < all; ++i) want[i] = before[i] + p.y[i];
      auto out = guarded<float>(before);
      a.out_f32 = out.get();
      run(a);
      CHECK(relative_error(fetch(out), want) <= tol_f32);
      break;
    }
    case SmallBatchEpilogue::split:
      // Four uneven parts, then q, k, v alone (no gate: the last part is empty).
      for (const bool gate : {true, false}) {
        const int n0 = p.N / 4 + 1, n1 = p.N / 2 + 3, n2 = gate ? p.N - 7 : p.N;
        const int bounds[] = {0, n0, n1, n2, p.N};
        std::vector<test::Device<T>> parts;
        for (int i = 0; i < 4; ++i) parts.push_back(poisoned<T>(static_cast<size_t>(p.B) * (bounds[i + 1] - bounds[i])));
        a.n0 = n0, a.n1 = n1, a.n2 = n2;
        a.out0 = parts[0].get(), a.out1 = parts[1].get(), a.out2 = parts[2].get();
        a.out3 = gate ? parts[3].get() : nullptr;
        run(a);
        for (int i = 0; i < (gate ? 4 : 3); ++i) {
          INFO("part " << i << (gate ? "" : " without the gate"));
          CHECK(relative_error(fetch(parts[i]), columns(p.y, p.B, p.N, bounds[i], bounds[i + 1])) <= tol_t);
        }
      }
      break;
    case SmallBatchEpilogue::swiglu: {
      const int inter = p.N / 2;
      std::vector<double> want(static_cast<size_t>(p.B) * inter);
      for (int b = 0; b < p.B; ++b)
        for (int j = 0; j < inter; ++j) want[b * inter + j] = silu(p.y[b * p.N + j]) * p.y[b * p.N + inter + j];
      auto out = poisoned<T>(want.size());
      a.out_t = out.get();
      run(a);
      CHECK(relative_error(fetch(out), want) <= tol_t);
      break;
    }
  }
}

const char* name(SmallBatchEpilogue e) {
  switch (e) {
    case SmallBatchEpilogue::store_t: return "store_t";
    case SmallBatchEpilogue::store_f32: return "store_f32";
    case SmallBatchEpilogue::add_f32: return "add_f32";
    case SmallBatchEpilogue::split: return "split";
    case SmallBatchEpilogue::swiglu: return "swiglu";
  }
  return "?";
}

constexpr SmallBatchEpilogue kEpilogues[] = {SmallBatchEpilogue::store_t, SmallBatchEpilogue::store_f32,
                                             SmallBatchEpilogue::add_f32, SmallBatchEpilogue::split,
                                             SmallBatchEpilogue::swiglu};

// The bits of an fp32 output.
std::vector<uint32_t> bits(const std::vector<float>& x) {
  std::vector<uint32_t> out(x.size());
  std::memcpy(out.data(), x.data(), x.size() * sizeof(float));
  return out;
}

}  // namespace

// N: a partial last tile (36, 138: also a partial swiglu tile) and the 340M model's q|k|v|g
// width; K: one pass over a few warps, whole passes, and a partial last pass.
TEMPLATE_TEST_CASE("small-batch products match float64 sums for every epilogue", "[gpu][small_batch]", float,
                   __nv_bfloat16, __half) {
  std::mt19937_64 rng(41);
  for (const int N : {36, 138, 3072})
    for (const int K : {64, 1024, 1032})
      for (const int B : {1, 2, 3, 8})
        for (const bool norm : {false, true}) {
          const auto p = make_problem<TestType>(rng, B, N, K, norm);
          for (const auto e : kEpilogues) {
            INFO(fmt::format("{} N={} K={} B={} norm={} {}", type_name<TestType>(), N, K, B, norm, name(e)));
            check_epilogue<TestType>(e, p, rng);
          }
        }
}

// The residual stream of a large model may hold values far past fp16's 65504 (here up to 1e5,
// times norm weights up to 1.5); under the RMSNorm the products must not see them overflow.
TEMPLATE_TEST_CASE("small-batch products under the RMSNorm take a residual stream past the fp16 range",
                   "[gpu][small_batch]", float, __nv_bfloat16, __half) {
  std::mt19937_64 rng(44);
  for (const int B : {1, 8}) {
    const auto p = make_problem<TestType>(rng, B, 138, 1024, true, 1e5f);
    for (const auto e : kEpilogues) {
      INFO(fmt::format("{} B={} {}", type_name<TestType>(), B, name(e)));
      check_epilogue<TestType>(e, p, rng);
    }
  }
}

// The 340M model's down projection (K = 2816: over 48 KiB of staged input at B = 8 in fp32) and
// a vocabulary-sized head, launched directly and replayed from a captured graph: the same bits
// each time, and right.
TEMPLATE_TEST_CASE("small-batch products repeat bit for bit, also from a CUDA graph", "[gpu][small_batch]", float,
                   __nv_bfloat16, __half) {
  std::mt19937_64 rng(42);
  struct Shape {
    int N, K;
    bool norm;
    SmallBatchEpilogue e;
  };
  for (const Shape s : {Shape{1024, 2816, false, SmallBatchEpilogue::add_f32},
                        Shape{32000, 1024, true, SmallBatchEpilogue::store_f32}})
    for (const int B : {1, 8}) {
      INFO(fmt::format("N={} K={} B={}", s.N, s.K, B));
      const auto p = make_problem<TestType>(rng, B, s.N, s.K, s.norm);
      Inputs<TestType> d(p);
      auto a = d.args;
      a.epilogue = s.e;
      const std::vector<float> start(p.y.size(), 0.0f);
      auto direct = guarded<float>(start), again = guarded<float>(start), replayed = guarded<float>(start);
      a.out_f32 = direct.get();
      run(a);
      a.out_f32 = again.get();
      run(a);

      cudaStream_t stream = nullptr;
      REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
      a.out_f32 = replayed.get();
      cuda::small_batch_gemv(a, stream);
      REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
      REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
      REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
      cudaStreamDestroy(stream);

      const auto out = fetch(direct);
      CHECK(relative_error(out, p.y) <= 1e-5);
      CHECK(bits(fetch(again)) == bits(out));
      CHECK(bits(fetch(replayed)) == bits(out));
    }
}

TEMPLATE_TEST_CASE("small-batch products refuse what they cannot do", "[gpu][small_batch]", float, __nv_bfloat16,
                   __half) {
  constexpr int kChunk = 16 / sizeof(TestType);
  CHECK(cuda::small_batch_supported<TestType>(1, kChunk));
  CHECK(cuda::small_batch_supported<TestType>(8, 4096));
  CHECK_FALSE(cuda::small_batch_supported<TestType>(0, 1024));
  CHECK_FALSE(cuda::small_batch_supported<TestType>(9, 1024));
  CHECK_FALSE(cuda::small_batch_supported<TestType>(1, 1024 + kChunk / 2));
  CHECK_FALSE(cuda::small_batch_supported<TestType>(8, 1 << 16));

  std::mt19937_64 rng(43);
  const auto p = make_problem<TestType>(rng, 2, 40, 64, false);
  Inputs<TestType> d(p);
  auto out = poisoned<TestType>(2 * 40);
  auto ok = d.args;
  ok.out_t = out.get();
  run(ok);  // the baseline is accepted
  CHECK(relative_error(fetch(out), p.y) <= tolerance_t<TestType>());

  auto a = ok;
  a.batch = 9;
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.k = 64 - kChunk / 2;
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.w = d.w.get() + 1;  // not 16-byte aligned
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.in = nullptr;  // no input
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.x = d.x.get();  // both inputs
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.out_t = nullptr;
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.epilogue = SmallBatchEpilogue::swiglu;
  a.n = 39;
  CHECK_THROWS_AS(run(a), Error);
  a = ok;
  a.epilogue = SmallBatchEpilogue::split;
  a.n0 = 10, a.n1 = 5, a.n2 = 20;
  CHECK_THROWS_AS(run(a), Error);
}
