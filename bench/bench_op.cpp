// CPU benchmarks of the MHLA operator: the batched decode step and chunked prefill, for the
// MHLA-340M head layout and a small one, beside the memory-bandwidth floor measured in the same
// run (a large memcpy: bytes read + written per second).
//
// Counters: bytes_per_second counts the state traffic the representation cannot avoid (read P
// and A, write A, plus the block-boundary recompute amortized over C tokens); x_floor is the
// measured time divided by that traffic at the measured copy bandwidth (1.0 = at the floor).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "copy_bandwidth.hpp"
#include "mhla/causal.hpp"

namespace {

double g_copy_bytes_per_second = 0;  // read + write

void BM_Copy(benchmark::State& st) {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  for (auto _ : st) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * 2 * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Copy)->Unit(benchmark::kMillisecond)->UseRealTime();

struct Layout {
  const char* name;
  mhla::HeadLayout heads;
  int block_size;
  int blocks;
};
const Layout kLayouts[] = {
    {"mhla340m", {4, 4, 128, 256}, 64, 32},
    {"small", {4, 2, 32, 64}, 16, 8},
};

mhla::CausalOperator make_operator(const Layout& l) {
  mhla::CausalOptions opt;
  opt.layout = l.heads;
  opt.block_size = l.block_size;
  opt.rotary = true;
  opt.policy = mhla::ContextPolicy::slide_mean;
  return mhla::CausalOperator(opt, mhla::MixingWeights::locality_init(l.blocks));
}

// A state in steady long-context decoding: the ring full, positions spread over the block so
// boundary recomputes happen at their natural rate; contents random (never time on zeros).
mhla::CausalState steady_state(const mhla::CausalOperator& op, long long position, std::mt19937_64& rng) {
  mhla::CausalState s = op.new_state();
  const int C = op.options().block_size, cap = s.recent_capacity();
  const long long folded = (position - 1) / C;
  s.reset_to(position, folded - cap, cap);
  std::uniform_real_distribution<float> u(-0.01f, 0.01f);
  const int slots = mhla::CausalState::kFirstRecent + cap;
  for (int slot = 0; slot < slots; ++slot)
    for (int g = 0; g < op.options().layout.kv_heads; ++g) {
      float* m = s.matrix(slot, g);
      for (size_t j = 0; j < s.matrix_elems(); ++j) m[j] = u(rng);
    }
  return s;
}

void BM_DecodeStep(benchmark::State& st, Layout l) {
  const auto op = make_operator(l);
  const auto& L = l.heads;
  const int batch = static_cast<int>(st.range(0));
  std::mt19937_64 rng(42);
  std::vector<mhla::CausalState> states;
  const long long start = 4LL * l.blocks * l.block_size;
  for (int i = 0; i < batch; ++i) states.push_back(steady_state(op, start + (i * 37) % l.block_size + 1, rng));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(batch) * L.heads * L.dk), k(static_cast<size_t>(batch) * L.kv_heads * L.dk),
      v(static_cast<size_t>(batch) * L.kv_heads * L.dv), o(static_cast<size_t>(batch) * L.heads * L.dv);
  for (auto* x : {&q, &k, &v})
    for (auto& e : *x) e = u(rng);
  std::vector<mhla::CausalSequence> seqs;
  for (int i = 0; i < batch; ++i)
    seqs.push_back({&states[i], q.data() + i * L.heads * L.dk, k.data() + i * L.kv_heads * L.dk,
                    v.data() + i * L.kv_heads * L.dv, o.data() + i * L.heads * L.dv, 1});

  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    op.forward_batch(seqs);
    benchmark::DoNotOptimize(o.data());
  }
  const double seconds_per_step =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(st.iterations());
  const double matrix = static_cast<double>(L.dk) * L.dv * sizeof(float) * L.kv_heads;
  const int cap = states[0].recent_capacity();
  // Per token: P and A read, A written; per boundary: the ring and tail read, P, the new recent
  // summary and the tail written.
  const double bytes_per_token = matrix * (3.0 + (cap + 4.0) / l.block_size);
  const double bytes = bytes_per_token * batch;
  st.SetBytesProcessed(static_cast<int64_t>(bytes * static_cast<double>(st.iterations())));
  st.counters["state_MB"] = benchmark::Counter(batch * static_cast<double>(states[0].byte_size()) / 1e6);
  st.counters["floor_us"] = benchmark::Counter(1e6 * bytes / g_copy_bytes_per_second);
  st.counters["x_floor"] = benchmark::Counter(seconds_per_step * g_copy_bytes_per_second / bytes);
}

void BM_Prefill(benchmark::State& st, Layout l) {
  const auto op = make_operator(l);
  const auto& L = l.heads;
  const long long T = st.range(0), chunk = st.range(1);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(T * L.heads * L.dk), k(T * L.kv_heads * L.dk), v(T * L.kv_heads * L.dv), o(T * L.heads * L.dv);
  for (auto* x : {&q, &k, &v})
    for (auto& e : *x) e = u(rng);
  for (auto _ : st) {
    mhla::CausalState s = op.new_state();
    op.prefill(s, q.data(), k.data(), v.data(), T, o.data(), chunk);
    benchmark::DoNotOptimize(o.data());
  }
  // Matrix-product FLOPs per token and query head: Q(P + wA), the intra-block triangle (QK^T and
  // SV over about C/2 keys), and per kv head K^T V into A.
  const double C = l.block_size;
  const double flops_per_token = L.heads * (2.0 * L.dk * L.dv + C * (L.dk + L.dv)) + L.kv_heads * 2.0 * L.dk * L.dv;
  st.counters["FLOP/s"] = benchmark::Counter(flops_per_token * static_cast<double>(T * st.iterations()),
                                            benchmark::Counter::kIsRate);
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(T * st.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  g_copy_bytes_per_second = measure_copy_bandwidth();
  benchmark::AddCustomContext("copy_GBps_read_plus_write", std::to_string(g_copy_bytes_per_second / 1e9));
  for (const auto& l : kLayouts) {
    benchmark::RegisterBenchmark((std::string("BM_DecodeStep/") + l.name).c_str(), BM_DecodeStep, l)
        ->Arg(1)->Arg(64)->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark((std::string("BM_Prefill/") + l.name).c_str(), BM_Prefill, l)
        ->Args({4096, 64})->Args({4096, 512})->Args({4096, 4096})->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
