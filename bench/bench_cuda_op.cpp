// The CUDA operator's prefill and decode step on the MHLA-340M head layout (4 heads, dk 128,
// dv 256, C 64, L 32, slide_mean), after warm-up (medians of repeats): prefill as device time
// between events and as wall time with a final synchronize, decode steps as wall time; beside the device's measured ceilings: a device-to-device copy (bytes read + written per
// second) and a large bf16 matrix product. Inputs in bf16, or in fp16 with
// MHLA_BENCH_PRECISION=f16. Prints a table and one JSON line per figure.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "cuda_ceilings.hpp"
#include "mhla/cuda.hpp"

namespace {

using mhla::bench::check;
using mhla::bench::median_wall_ms;

void report(const std::string& what, double ms, double floor_ms, const std::string& extra = "") {
  std::printf("%-34s %10.4f ms   floor %8.4f ms   x_floor %6.2f %s\n", what.c_str(), ms, floor_ms, ms / floor_ms,
              extra.c_str());
  std::printf("JSON {\"figure\":\"%s\",\"ms\":%.6f,\"floor_ms\":%.6f}\n", what.c_str(), ms, floor_ms);
}

}  // namespace

// An optional argument keeps only the figures whose name contains it (for profiling one).
int main(int argc, char** argv) try {
  const std::string only = argc > 1 ? argv[1] : "";
  auto wanted = [&](const std::string& figure) { return figure.find(only) != std::string::npos; };
  const bool f16 = mhla::bench::bench_f16();
  const auto precision = f16 ? mhla::cuda::Precision::f16 : mhla::cuda::Precision::bf16;
  auto random_inputs = [&](size_t n, unsigned seed) { return mhla::bench::random_16bit(n, seed, f16); };
  if (mhla::cuda::device_count() == 0) {
    std::puts("skipped: no GPU");
    return 77;
  }
  std::printf("device: %s\ninputs: %s\n", mhla::cuda::device_name(0).c_str(), f16 ? "fp16" : "bf16");

  const mhla::bench::Ceilings ceilings = mhla::bench::measure_ceilings();
  const double bw = ceilings.bytes_per_s;
  std::printf("ceilings: copy %.2f TB/s (read+write), bf16 GEMM %.1f TFLOP/s\n", bw / 1e12, ceilings.flops / 1e12);
  std::printf("JSON {\"figure\":\"copy_TBps\",\"value\":%.4f}\nJSON {\"figure\":\"bf16_gemm_TFLOPs\",\"value\":%.2f}\n",
              bw / 1e12, ceilings.flops / 1e12);

  mhla::CausalOptions opt;
  opt.layout = {4, 4, 128, 256};
  opt.block_size = 64;
  opt.rotary = true;
  opt.policy = mhla::ContextPolicy::slide_mean;
  const auto mixing = mhla::MixingWeights::locality_init(32);
  const auto& L = opt.layout;
  const double me = double(L.dk) * L.dv;

  // Prefill: bytes the design must move at least (inputs, outputs, the block summaries written
  // and read twice by the band product, the prefixes written and read) and its matrix FLOPs.
  for (long long N : {2048LL, 8192LL, 32768LL, 131072LL}) {
    if (!wanted("op prefill N=" + std::to_string(N))) continue;
    mhla::cuda::GpuCausalOperator op(opt, mixing, 1, precision, 64);
    void* q = random_inputs(N * L.heads * L.dk, 10);
    void* k = random_inputs(N * L.kv_heads * L.dk, 11);
    void* v = random_inputs(N * L.kv_heads * L.dv, 12);
    float* o = nullptr;
    check(cudaMalloc(&o, N * L.heads * L.dv * sizeof(float)), "cudaMalloc");
    const int slot = op.acquire();
    // Two clocks: device time between events on the operator's stream around the prefill (how
    // the PyTorch peers are timed), and wall time to the end of a final synchronize.
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");
    check(cudaEventCreate(&start), "cudaEventCreate");
    check(cudaEventCreate(&stop), "cudaEventCreate");
    op.set_stream(stream);
    std::vector<double> device_ms;
    const double wall_ms = median_wall_ms(
        [&] {
          op.release(slot);
          op.acquire();
          check(cudaEventRecord(start, stream), "cudaEventRecord");
          op.prefill(slot, q, k, v, N, o);
          check(cudaEventRecord(stop, stream), "cudaEventRecord");
          op.synchronize();
          float e = 0;
          check(cudaEventElapsedTime(&e, start, stop), "cudaEventElapsedTime");
          device_ms.push_back(e);
        },
        2, 10);
    device_ms.erase(device_ms.begin(), device_ms.begin() + 2);  // the warm-up runs
    std::sort(device_ms.begin(), device_ms.end());
    const double blocks = double(N) / 64;
    const double io = N * (L.heads * L.dk + L.kv_heads * L.dk + L.kv_heads * L.dv) * 2.0 + N * L.heads * L.dv * 4.0;
    const double summaries = blocks * L.kv_heads * me * 2.0 * (1 + 2 + 1 + 1);
    const double floor_ms = (io + summaries) / bw * 1e3;
    report("op prefill N=" + std::to_string(N), device_ms[device_ms.size() / 2], floor_ms);
    report("op prefill N=" + std::to_string(N) + " wall", wall_ms, floor_ms);
    op.set_stream(nullptr);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(o);
  }

  // Decode: B sequences in steady long-context decoding, positions spread over the block so
  // boundary recomputes run at their natural rate; 256 consecutive steps are timed.
  for (int Bn : {1, 32, 256}) {
    if (!wanted("op decode step B=" + std::to_string(Bn))) continue;
    mhla::cuda::GpuCausalOperator op(opt, mixing, Bn, precision, 64);
    std::vector<int> slots;
    mhla::CausalOperator cpu(opt, mixing);
    for (int i = 0; i < Bn; ++i) {
      slots.push_back(op.acquire());
      mhla::CausalState st = cpu.new_state();
      const long long pos = 4 * 2048 + (i * 37) % 64 + 1;
      st.reset_to(pos, (pos - 1) / 64 - 30, 30);
      op.upload(slots.back(), st);
    }
    void* q = random_inputs(size_t(Bn) * L.heads * L.dk, 20);
    void* k = random_inputs(size_t(Bn) * L.kv_heads * L.dk, 21);
    void* v = random_inputs(size_t(Bn) * L.kv_heads * L.dv, 22);
    float* o = nullptr;
    check(cudaMalloc(&o, size_t(Bn) * L.heads * L.dv * sizeof(float)), "cudaMalloc");
    const int steps = 256;
    const double ms = median_wall_ms(
                          [&] {
                            for (int s = 0; s < steps; ++s) op.decode(slots, q, k, v, o);
                            op.synchronize();
                          },
                          1, 5) /
                      steps;
    const double bytes = Bn * L.kv_heads * me * 4.0 * (3.0 + (30 + 4.0) / 64);
    report("op decode step B=" + std::to_string(Bn), ms, bytes / bw * 1e3);
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(o);
  }

  // Non-causal forward (normalized, relu, C 64, M = N/64 blocks) in 16 bits: bytes the design must
  // move at least (inputs read, the summaries S written and read, the mixed summaries P written
  // and read, the output written).
  for (long long N : {8192LL, 32768LL}) {
    if (!wanted("op noncausal N=" + std::to_string(N))) continue;
    mhla::NonCausalOptions nc;
    nc.layout = L;
    nc.block_size = 64;
    mhla::cuda::GpuNonCausalOperator op(nc, precision);
    const long long M = N / 64;
    const std::vector<float> w(M * M, 1.0f / M);
    void* q = random_inputs(N * L.heads * L.dk, 30);
    void* k = random_inputs(N * L.kv_heads * L.dk, 31);
    void* v = random_inputs(N * L.kv_heads * L.dv, 32);
    float* o = nullptr;
    check(cudaMalloc(&o, N * L.heads * L.dv * sizeof(float)), "cudaMalloc");
    const double ms = median_wall_ms(
        [&] {
          op.forward(w, q, k, v, N, o);
          op.synchronize();
        },
        2, 10);
    const double io = N * (L.heads * L.dk + L.kv_heads * L.dk + L.kv_heads * L.dv) * 2.0 + N * L.heads * L.dv * 4.0;
    const double summaries = M * L.kv_heads * me * 2.0 * (2 + 2);
    report("op noncausal N=" + std::to_string(N), ms, (io + summaries) / bw * 1e3);
    cudaFree(q);
    cudaFree(k);
    cudaFree(v);
    cudaFree(o);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mhla_bench_cuda_op: %s\n", e.what());
  return 1;
}
