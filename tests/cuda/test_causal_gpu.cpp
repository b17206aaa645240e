// The CUDA causal operator against the CPU reference from the same description: whole-sequence
// prefill, batched decode steps across block boundaries and past the window, state transfer
// between CPU and GPU, bf16 and fp16 inputs, and refusals.
//
// Tolerances: fp32 1e-5. In bf16 the reference takes the same rounded inputs, and the GPU also
// rounds the features, the block summaries, the mixed prefixes and the scores to bf16 (8
// significant bits), a few roundings in series: 2e-2. fp16 rounds the same values to 11
// significant bits: an eighth of that, 2.5e-3 (tolerance_16).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>

#include "device_memory.hpp"
#include "mhla/cuda.hpp"
#include "mhla/error.hpp"
#include "support/reference.hpp"

using namespace mhla;
using mhla::test::relative_error;

namespace {

struct Shape {
  HeadLayout layout;
  int C, L;
  FeatureMap fm;
  bool rotary;
  ContextPolicy policy;
  long long T;
  int tile;
};

CausalOptions options_of(const Shape& s) {
  CausalOptions o;
  o.layout = s.layout;
  o.block_size = s.C;
  o.feature_map = s.fm;
  o.rotary = s.rotary;
  o.policy = s.policy;
  return o;
}

bool all_finite(const std::vector<float>& x) {
  for (float e : x)
    if (!std::isfinite(e)) return false;
  return true;
}

// Largest relative difference over the state tensors of two states at the same position.
double state_difference(const CausalState& a, const CausalState& b) {
  REQUIRE(a.position() == b.position());
  REQUIRE(a.recent_count() == b.recent_count());
  REQUIRE(a.tail_blocks() == b.tail_blocks());
  std::vector<float> xa, xb;
  for (int g = 0; g < a.layout().kv_heads; ++g) {
    std::vector<int> slots = {CausalState::kPrefix, CausalState::kRunning, CausalState::kTail};
    for (int r = 1; r <= a.recent_count(); ++r) slots.push_back(-r);
    for (int s : slots) {
      const float* pa = a.matrix(s < 0 ? a.recent_slot(-s) : s, g);
      const float* pb = b.matrix(s < 0 ? b.recent_slot(-s) : s, g);
      xa.insert(xa.end(), pa, pa + a.matrix_elems());
      xb.insert(xb.end(), pb, pb + b.matrix_elems());
    }
  }
  return relative_error(xa, xb);
}

void check_prefill(const Shape& s, std::mt19937_64& rng) {
  INFO(fmt::format("H{} Hkv{} dk{} dv{} C{} L{} {} rotary={} {} T={} tile={}", s.layout.heads, s.layout.kv_heads,
                   s.layout.dk, s.layout.dv, s.C, s.L, to_string(s.fm), s.rotary, to_string(s.policy), s.T, s.tile));
  const auto opt = options_of(s);
  const auto mixing = MixingWeights::from_learned(test::random_vector(rng, s.L * s.L, -0.2f, 1.2f), s.L);
  const CausalOperator cpu(opt, mixing);
  cuda::GpuCausalOperator gpu(opt, mixing, 2, cuda::Precision::f32, s.tile);
  const auto in = test::random_inputs(rng, s.layout, s.T);
  const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, s.T);

  auto q = test::to_device<float>(in.q), k = test::to_device<float>(in.k), v = test::to_device<float>(in.v);
  auto o = test::poisoned_output(static_cast<size_t>(s.T) * s.layout.heads * s.layout.dv);
  const int slot = gpu.acquire();
  gpu.prefill(slot, q.get(), k.get(), v.get(), s.T, o.get());
  gpu.synchronize();
  const auto out = test::from_device(o);
  REQUIRE(all_finite(out));
  CHECK(relative_error(out, ref) <= 1e-5);

  CausalState cpu_state = cpu.new_state();
  std::vector<float> cpu_out(out.size());
  cpu.prefill(cpu_state, in.q.data(), in.k.data(), in.v.data(), s.T, cpu_out.data(), 7);
  CHECK(state_difference(gpu.download(slot), cpu_state) <= 1e-5);
}

template <class T>
cuda::Precision precision_of() {
  return std::is_same_v<T, __half> ? cuda::Precision::f16 : cuda::Precision::bf16;
}

// The shape of the 16-bit accuracy tests: rotary features, slide_mean, 4 heads.
CausalOptions rotary_options_16() {
  CausalOptions opt;
  opt.layout = {4, 4, 32, 64};
  opt.block_size = 16;
  opt.rotary = true;
  opt.policy = ContextPolicy::slide_mean;
  return opt;
}

// 16-bit inputs through prefill then extend: within T's accuracy of the reference on rounded
// inputs.
template <class T>
void check_extend_16(std::mt19937_64& rng) {
  const CausalOptions opt = rotary_options_16();
  const auto mixing = MixingWeights::locality_init(8);
  cuda::GpuCausalOperator gpu(opt, mixing, 1, precision_of<T>(), 8);
  const long long T_ = 342;
  const auto in = test::round_to<T>(test::random_inputs(rng, opt.layout, T_));
  const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, T_);
  auto q = test::to_device<T>(in.q), k = test::to_device<T>(in.k), v = test::to_device<T>(in.v);
  auto o = test::poisoned_output(static_cast<size_t>(T_) * 4 * 64);
  const int slot = gpu.acquire();
  gpu.prefill(slot, q.get(), k.get(), v.get(), 100, o.get());
  gpu.extend(slot, q.get() + 100 * 4 * 32, k.get() + 100 * 4 * 32, v.get() + 100 * 4 * 64, 242, o.get() + 100 * 4 * 64);
  gpu.synchronize();
  const auto out = test::from_device(o);
  REQUIRE(all_finite(out));
  CHECK(relative_error(out, ref) <= test::tolerance_16<T>(2e-2));
}

}  // namespace

TEST_CASE("GPU prefill matches the float64 reference and leaves the CPU's state", "[gpu][prefill]") {
  std::mt19937_64 rng(31);
  const std::vector<HeadLayout> layouts = {{2, 2, 8, 8}, {4, 2, 16, 12}, {2, 1, 6, 4}};
  for (const auto& layout : layouts)
    for (auto fm : {FeatureMap::relu, FeatureMap::elu1})
      for (bool rotary : {false, true}) {
        for (long long T : {1LL, 3LL, 4LL, 5LL, 15LL, 16LL})
          check_prefill({layout, 4, 4, fm, rotary, ContextPolicy::strict, T, 4}, rng);
        for (auto policy : {ContextPolicy::slide, ContextPolicy::slide_mean})
          for (long long T : {17LL, 45LL, 64LL, 150LL})
            for (int tile : {4, 5, 64}) check_prefill({layout, 4, 4, fm, rotary, policy, T, tile}, rng);
      }
}

TEST_CASE("GPU extend continues a sequence block by block as the CPU does", "[gpu][prefill]") {
  std::mt19937_64 rng(36);
  struct Case {
    HeadLayout layout;
    int C, L;
    ContextPolicy policy;
    std::vector<long long> pieces;  // the first from a fresh slot by prefill, unless 0; the rest by extend
  };
  const std::vector<Case> cases = {
      // From a fresh slot by extend, mid-block and on block boundaries, far past the window.
      {{2, 2, 8, 8}, 4, 4, ContextPolicy::slide_mean, {0, 5, 3, 4, 1, 30}},
      {{4, 2, 16, 12}, 4, 4, ContextPolicy::slide, {9, 7, 16, 2}},
      {{2, 1, 6, 4}, 4, 4, ContextPolicy::strict, {6, 5, 5}},  // exactly the trained window
      {{4, 4, 16, 16}, 8, 6, ContextPolicy::slide_mean, {40, 1, 63, 100}},
  };
  for (const Case& c : cases)
    for (auto fm : {FeatureMap::relu, FeatureMap::elu1})
      for (bool rotary : {false, true}) {
        long long T = 0;
        for (long long p : c.pieces) T += p;
        INFO(fmt::format("H{} Hkv{} C{} L{} {} {} rotary={} T={}", c.layout.heads, c.layout.kv_heads, c.C, c.L,
                         to_string(c.policy), to_string(fm), rotary, T));
        const auto opt = options_of({c.layout, c.C, c.L, fm, rotary, c.policy, T, c.L});
        const auto mixing = MixingWeights::from_learned(test::random_vector(rng, c.L * c.L, -0.2f, 1.2f), c.L);
        const auto in = test::random_inputs(rng, c.layout, T);
        const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, T);
        cuda::GpuCausalOperator gpu(opt, mixing, 1, cuda::Precision::f32, c.L);
        auto q = test::to_device<float>(in.q), k = test::to_device<float>(in.k), v = test::to_device<float>(in.v);
        auto o = test::poisoned_output(static_cast<size_t>(T) * c.layout.heads * c.layout.dv);
        const int slot = gpu.acquire();
        const auto& L = c.layout;
        long long t0 = 0;
        for (size_t i = 0; i < c.pieces.size(); ++i) {
          const long long n = c.pieces[i];
          if (n == 0) continue;
          const float* qp = q.get() + t0 * L.heads * L.dk;
          const float* kp = k.get() + t0 * L.kv_heads * L.dk;
          const float* vp = v.get() + t0 * L.kv_heads * L.dv;
          float* op = o.get() + t0 * L.heads * L.dv;
          if (i == 0)
            gpu.prefill(slot, qp, kp, vp, n, op);
          else
            gpu.extend(slot, qp, kp, vp, n, op);
          t0 += n;
          CHECK(gpu.position(slot) == t0);
        }
        gpu.synchronize();
        const auto out = test::from_device(o);
        REQUIRE(all_finite(out));
        CHECK(relative_error(out, ref) <= 1e-5);
        const CausalOperator cpu(opt, mixing);
        CausalState st = cpu.new_state();
        std::vector<float> cpu_out(out.size());
        cpu.prefill(st, in.q.data(), in.k.data(), in.v.data(), T, cpu_out.data(), 7);
        CHECK(state_difference(gpu.download(slot), st) <= 1e-5);
      }
  check_extend_16<__nv_bfloat16>(rng);
  check_extend_16<__half>(rng);
}

TEST_CASE("GPU decode steps match the CPU across boundaries and past the window", "[gpu][decode]") {
  std::mt19937_64 rng(32);
  for (auto policy : {ContextPolicy::strict, ContextPolicy::slide_mean})
    for (const HeadLayout layout : {HeadLayout{2, 2, 8, 8}, HeadLayout{4, 1, 16, 12}, HeadLayout{8, 4, 32, 64}}) {
      INFO(to_string(policy) << " H=" << layout.heads << " Hkv=" << layout.kv_heads);
      CausalOptions opt;
      opt.layout = layout;
      opt.block_size = 4;
      opt.rotary = true;
      opt.policy = policy;
      const int L = 4;
      const auto mixing = MixingWeights::from_learned(test::random_vector(rng, L * L, 0.0f, 1.0f), L);
      const CausalOperator cpu(opt, mixing);
      const int B = 5;
      cuda::GpuCausalOperator gpu(opt, mixing, B, cuda::Precision::f32);
      // Sequences start at different positions, set up on the CPU and uploaded.
      const std::vector<long long> start = {0, 3, 4, 9, 12};
      std::vector<CausalState> cpu_states;
      std::vector<int> slots;
      for (int i = 0; i < B; ++i) {
        CausalState st = cpu.new_state();
        const auto w = test::random_inputs(rng, layout, start[i]);
        std::vector<float> o(start[i] * layout.heads * layout.dv);
        cpu.prefill(st, w.q.data(), w.k.data(), w.v.data(), start[i], o.data());
        slots.push_back(gpu.acquire());
        gpu.upload(slots.back(), st);
        cpu_states.push_back(st);
      }
      const int steps = policy == ContextPolicy::strict ? 4 : 30;
      const size_t qn = static_cast<size_t>(B) * layout.heads * layout.dk, kn = static_cast<size_t>(B) * layout.kv_heads * layout.dk,
                   vn = static_cast<size_t>(B) * layout.kv_heads * layout.dv, on = static_cast<size_t>(B) * layout.heads * layout.dv;
      for (int step = 0; step < steps; ++step) {
        const auto q = test::random_vector(rng, qn), k = test::random_vector(rng, kn), v = test::random_vector(rng, vn);
        std::vector<float> ref(on);
        for (int i = 0; i < B; ++i)
          cpu.decode(cpu_states[i], q.data() + i * qn / B, k.data() + i * kn / B, v.data() + i * vn / B, 1,
                     ref.data() + i * on / B);
        auto dq = test::to_device<float>(q), dk = test::to_device<float>(k), dv = test::to_device<float>(v);
        auto o = test::poisoned_output(on);
        gpu.decode(slots, dq.get(), dk.get(), dv.get(), o.get());
        gpu.synchronize();
        const auto out = test::from_device(o);
        REQUIRE(all_finite(out));
        CHECK(relative_error(out, ref) <= 1e-5);
      }
      for (int i = 0; i < B; ++i) CHECK(state_difference(gpu.download(slots[i]), cpu_states[i]) <= 1e-5);
    }
}

TEST_CASE("a GPU prefill continued by GPU decode matches the CPU run", "[gpu][decode]") {
  std::mt19937_64 rng(33);
  CausalOptions opt;
  opt.layout = {4, 2, 16, 16};
  opt.block_size = 8;
  opt.rotary = true;
  opt.policy = ContextPolicy::slide;
  const auto mixing = MixingWeights::locality_init(4);
  const CausalOperator cpu(opt, mixing);
  cuda::GpuCausalOperator gpu(opt, mixing, 1, cuda::Precision::f32, 4);
  const long long T = 77, extra = 20;
  const auto in = test::random_inputs(rng, opt.layout, T + extra);
  const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, T + extra);
  auto q = test::to_device<float>(in.q), k = test::to_device<float>(in.k), v = test::to_device<float>(in.v);
  auto o = test::poisoned_output(static_cast<size_t>(T + extra) * 4 * 16);
  const int slot = gpu.acquire();
  gpu.prefill(slot, q.get(), k.get(), v.get(), T, o.get());
  for (long long t = T; t < T + extra; ++t) {
    const int one[] = {slot};
    gpu.decode(one, q.get() + t * 4 * 16, k.get() + t * 2 * 16, v.get() + t * 2 * 16, o.get() + t * 4 * 16);
  }
  gpu.synchronize();
  const auto out = test::from_device(o);
  REQUIRE(all_finite(out));
  CHECK(relative_error(out, ref) <= 1e-5);
  CHECK(gpu.position(slot) == T + extra);
}

TEMPLATE_TEST_CASE("16-bit inputs stay within their accuracy of the reference", "[gpu][bf16][f16]", __nv_bfloat16,
                   __half) {
  std::mt19937_64 rng(34);
  const CausalOptions opt = rotary_options_16();
  const auto mixing = MixingWeights::locality_init(8);
  cuda::GpuCausalOperator gpu(opt, mixing, 1, precision_of<TestType>(), 8);
  const long long T = 1000;
  const auto in = test::round_to<TestType>(test::random_inputs(rng, opt.layout, T));
  const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, T);
  auto q = test::to_device<TestType>(in.q), k = test::to_device<TestType>(in.k), v = test::to_device<TestType>(in.v);
  auto o = test::poisoned_output(static_cast<size_t>(T) * 4 * 64);
  const int slot = gpu.acquire();
  gpu.prefill(slot, q.get(), k.get(), v.get(), T, o.get());
  gpu.synchronize();
  const auto out = test::from_device(o);
  REQUIRE(all_finite(out));
  CHECK(relative_error(out, ref) <= test::tolerance_16<TestType>(2e-2));
}

TEST_CASE("the GPU operator refuses what it does not cover", "[gpu]") {
  CausalOptions opt;
  opt.layout = {2, 2, 8, 8};
  opt.block_size = 4;
  opt.normalize = true;
  CHECK_THROWS_WITH(cuda::GpuCausalOperator(opt, MixingWeights::harmonic_init(2), 1, cuda::Precision::f32),
                    Catch::Contains("normalized"));
  opt.normalize = false;
  cuda::GpuCausalOperator gpu(opt, MixingWeights::harmonic_init(2), 2, cuda::Precision::f32, 2);
  const int a = gpu.acquire();
  test::Device<float> x(64);
  const int twice[] = {a, a};
  CHECK_THROWS_WITH(gpu.decode(twice, x.get(), x.get(), x.get(), x.get()), Catch::Contains("twice"));
  CHECK_THROWS_AS(gpu.prefill(a, x.get(), x.get(), x.get(), 9, x.get()), RefusedError);
  gpu.acquire();
  CHECK_THROWS_WITH(gpu.acquire(), Catch::Contains("in use"));
}

TEMPLATE_TEST_CASE("16-bit prefill on the tensor cores: the 340M head layout and grouped heads, partial last blocks",
                   "[gpu][bf16][f16]", __nv_bfloat16, __half) {
  std::mt19937_64 rng(35);
  struct Case {
    HeadLayout layout;
    int C, L;
    long long T;
  };
  // The prefill tile is L blocks, so the longer cases have far tiles (three tiles and more).
  for (const Case& c : {Case{{4, 4, 128, 256}, 64, 32, 64 * 40 + 37}, Case{{4, 4, 128, 256}, 64, 4, 64 * 20 + 37},
                        Case{{8, 2, 32, 64}, 32, 8, 1000}, Case{{2, 1, 16, 16}, 16, 4, 16 * 9},
                        Case{{4, 2, 32, 208}, 32, 3, 32 * 7 + 1}, Case{{4, 4, 128, 256}, 64, 32, 5}}) {
    INFO("H=" << c.layout.heads << " Hkv=" << c.layout.kv_heads << " C=" << c.C << " T=" << c.T);
    CausalOptions opt;
    opt.layout = c.layout;
    opt.block_size = c.C;
    opt.rotary = true;
    opt.policy = ContextPolicy::slide_mean;
    const auto mixing = MixingWeights::from_learned(test::random_vector(rng, c.L * c.L, 0.0f, 1.0f), c.L);
    cuda::GpuCausalOperator gpu(opt, mixing, 1, precision_of<TestType>(), c.L);
    const auto in = test::round_to<TestType>(test::random_inputs(rng, opt.layout, c.T));
    const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, c.T);
    auto q = test::to_device<TestType>(in.q), k = test::to_device<TestType>(in.k), v = test::to_device<TestType>(in.v);
    auto o = test::poisoned_output(static_cast<size_t>(c.T) * c.layout.heads * c.layout.dv);
    const int slot = gpu.acquire();
    gpu.prefill(slot, q.get(), k.get(), v.get(), c.T, o.get());
    gpu.synchronize();
    const auto out = test::from_device(o);
    REQUIRE(all_finite(out));
    CHECK(relative_error(out, ref) <= test::tolerance_16<TestType>(2e-2));
    // The final state (the mixed prefix includes the far tiles' share) is the CPU's.
    const CausalOperator cpu(opt, mixing);
    CausalState st = cpu.new_state();
    std::vector<float> cpu_out(out.size());
    cpu.prefill(st, in.q.data(), in.k.data(), in.v.data(), c.T, cpu_out.data());
    CHECK(state_difference(gpu.download(slot), st) <= test::tolerance_16<TestType>(2e-2));
  }
}

// The far tiles' share of a long prefill sums every block two tiles back and more: with keys
// and values of one sign it grows with the sequence, here to about 1.6e5 per element, past
// fp16's 65504, while each block's summary and each mixed prefix (slide_mean) stay small. The
// output and the state must still be right, on the tensor-core path (dv 16) and the cuBLAS one
// (dv 12).
TEST_CASE("fp16 prefill of a long sequence whose far blocks sum past the fp16 range", "[gpu][f16]") {
  std::mt19937_64 rng(37);
  for (const HeadLayout layout : {HeadLayout{2, 2, 16, 16}, HeadLayout{2, 1, 16, 12}}) {
    INFO("dv=" << layout.dv);
    CausalOptions opt;
    opt.layout = layout;
    opt.block_size = 16;
    opt.policy = ContextPolicy::slide_mean;
    const auto mixing = MixingWeights::locality_init(4);
    cuda::GpuCausalOperator gpu(opt, mixing, 1, cuda::Precision::f16, 4);
    const long long T = 16 * 1000;
    auto in = test::random_inputs(rng, layout, T, 0.0f);
    for (auto& x : in.v) x = 20.0f * (x + 1.0f);  // [0, 40]
    in = test::round_to<__half>(std::move(in));
    const auto ref = test::reference_causal(opt, mixing, in.q, in.k, in.v, T);
    auto q = test::to_device<__half>(in.q), k = test::to_device<__half>(in.k), v = test::to_device<__half>(in.v);
    auto o = test::poisoned_output(static_cast<size_t>(T) * layout.heads * layout.dv);
    const int slot = gpu.acquire();
    gpu.prefill(slot, q.get(), k.get(), v.get(), T, o.get());
    gpu.synchronize();
    const auto out = test::from_device(o);
    REQUIRE(all_finite(out));
    CHECK(relative_error(out, ref) <= test::tolerance_16<__half>(2e-2));
    const CausalOperator cpu(opt, mixing);
    CausalState st = cpu.new_state();
    std::vector<float> cpu_out(out.size());
    cpu.prefill(st, in.q.data(), in.k.data(), in.v.data(), T, cpu_out.data());
    CHECK(state_difference(gpu.download(slot), st) <= test::tolerance_16<__half>(2e-2));
  }
}
