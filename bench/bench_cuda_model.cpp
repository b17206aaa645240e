// The whole model on the GPU, MHLA-340M layout with random weights (bf16, or fp16 with
// MHLA_BENCH_PRECISION=f16; slide_mean): prefill tokens/s by length, and decode tokens/s at batch
// 1 and 64 over contexts 1K to 128K, beside their floors from ceilings measured in the same run
// (copy bandwidth, bf16 GEMM rate).
// Decode floor: every 16-bit weight read once per step plus each sequence's state traffic
// (1.84 MB per layer and token, bench/NOTES.md); prefill floor: 2 FLOPs per weight and token
// at the GEMM rate. Prints a table and one JSON line per figure.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_ceilings.hpp"
#include "mhla/cuda.hpp"
#include "mhla/device.hpp"
#include "mhla/error.hpp"
#include "mhla/model.hpp"

namespace {

using mhla::bench::median_wall_ms;

void report(const std::string& what, double ms, double floor_ms, double tokens) {
  const double rate = tokens / (ms * 1e-3);
  std::printf("%-36s %10.3f ms %12.0f tok/s   floor %9.3f ms (%.0f tok/s)   x_floor %5.2f\n", what.c_str(), ms, rate,
              floor_ms, tokens / (floor_ms * 1e-3), ms / floor_ms);
  std::printf("JSON {\"figure\":\"%s\",\"ms\":%.6f,\"tokens_per_s\":%.1f,\"floor_ms\":%.6f}\n", what.c_str(), ms, rate,
              floor_ms);
}

std::vector<int> ids(size_t n, int vocab) {
  std::vector<int> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int>((i * 7919 + 13) % static_cast<size_t>(vocab));
  return v;
}

}  // namespace

// An optional argument keeps only the figures whose name contains it (for profiling one);
// MHLA_BENCH_STEPS sets the decode steps timed (default 128).
int main(int argc, char** argv) try {
  const std::string only = argc > 1 ? argv[1] : "";
  auto wanted = [&](const std::string& figure) { return figure.find(only) != std::string::npos; };
  const int steps = std::getenv("MHLA_BENCH_STEPS") ? std::atoi(std::getenv("MHLA_BENCH_STEPS")) : 128;
  if (mhla::cuda::device_count() == 0) {
    std::puts("skipped: no GPU");
    return 77;
  }
  std::printf("device: %s\n", mhla::cuda::device_name(0).c_str());
  const mhla::bench::Ceilings ceil = mhla::bench::measure_ceilings();
  std::printf("ceilings: copy %.2f TB/s (read+write), bf16 GEMM %.1f TFLOP/s\n", ceil.bytes_per_s / 1e12,
              ceil.flops / 1e12);

  mhla::ModelConfig cfg;  // the defaults are the research 340M configuration
  cfg.intermediate_size = 2816;
  const auto t0 = std::chrono::steady_clock::now();
  const mhla::Model model = mhla::Model::random(cfg, 32, 1);
  std::printf("model: %.1f M parameters (random weights, made in %.1f s)\n", model.parameter_count() / 1e6,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  const double params = static_cast<double>(model.parameter_count());
  const double embed = double(cfg.vocab_size) * cfg.hidden_size;
  const double layer_params = params - embed * (cfg.tie_word_embeddings ? 1 : 2);
  const double state_bytes_per_token = cfg.num_layers * 1.84e6;  // per sequence and step

  mhla::DeviceModelOptions o;
  o.max_sequences = 64;
  o.policy = mhla::ContextPolicy::slide_mean;
  o.precision = mhla::bench::bench_f16() ? mhla::DevicePrecision::f16 : mhla::DevicePrecision::bf16;
  const auto dev = mhla::make_device_model(model, mhla::Device::cuda, o);
  std::printf("device model: %s, %.0f MB of state per sequence\n", dev->description().c_str(), dev->slot_bytes() / 1e6);

  // Prefill: the projections and head row are GEMMs over every token (2 FLOPs per weight).
  for (long long N : {2048LL, 8192LL, 32768LL}) {
    if (!wanted("model prefill N=" + std::to_string(N))) continue;
    const auto prompt = ids(static_cast<size_t>(N), cfg.vocab_size);
    std::vector<float> logits;
    const double ms = median_wall_ms(
        [&] {
          const mhla::DeviceSlot s(*dev);
          const mhla::DeviceStep step{s.slot(), prompt, mhla::LogitsMode::last, &logits};
          dev->forward({&step, 1});
        },
        1, 5);
    const double floor_ms = 2.0 * layer_params * N / ceil.flops * 1e3;
    report("model prefill N=" + std::to_string(N), ms, floor_ms, double(N));
  }

  // Prefill of a 32K prompt sent in 4K pieces, as the server feeds long prompts: the first
  // piece runs the whole-sequence prefill, every later one continues from a non-zero position.
  if (wanted("model prefill N=32768 in 4096-token pieces")) {
    const long long N = 32768, piece = 4096;
    const auto prompt = ids(static_cast<size_t>(N), cfg.vocab_size);
    std::vector<float> logits;
    const double ms = median_wall_ms(
        [&] {
          const mhla::DeviceSlot s(*dev);
          for (long long at = 0; at < N; at += piece) {
            const mhla::DeviceStep step{s.slot(), std::span<const int>(prompt).subspan(at, piece),
                                        at + piece == N ? mhla::LogitsMode::last : mhla::LogitsMode::none, &logits};
            dev->forward({&step, 1});
          }
        },
        1, 5);
    report("model prefill N=32768 in 4096-token pieces", ms, 2.0 * layer_params * N / ceil.flops * 1e3, double(N));
  }

  // Decode: B sequences at context N (one prefilled, the rest forked from it), 128 steps timed
  // so block boundaries come at their natural rate; then without logits, what moving them to
  // the host costs; then with the next token sampled on the device (greedy, and temperature
  // 0.8 with top-p 0.95 over the whole vocabulary), only ids crossing to the host.
  auto decode_figures = [&](mhla::DeviceModel& d, long long N, const std::string& suffix, bool without_logits) {
    std::vector<mhla::DeviceSlot> slots;
    for (int B : {1, 64}) {
      const std::string name = "model decode B=" + std::to_string(B) + " ctx=" + std::to_string(N) + suffix;
      if (!wanted(name)) continue;
      if (slots.empty()) {
        slots.emplace_back(d);
        const auto prompt = ids(static_cast<size_t>(N), cfg.vocab_size);
        const mhla::DeviceStep step{slots[0].slot(), prompt, mhla::LogitsMode::none, nullptr};
        d.forward({&step, 1});
      }
      while (static_cast<int>(slots.size()) < B) slots.push_back(slots[0]);
      std::vector<std::vector<float>> logits(B);
      std::vector<int> next(B, 7);
      std::vector<mhla::DeviceStep> batch;
      for (int i = 0; i < B; ++i) batch.push_back({slots[i].slot(), {&next[i], 1}, mhla::LogitsMode::last, &logits[i]});
      for (int s = 0; s < 4; ++s) d.forward(batch);  // warm-up
      auto time_steps = [&] {
        return median_wall_ms(
                   [&] {
                     for (int s = 0; s < steps; ++s) d.forward(batch);
                   },
                   0, 1) /
               steps;
      };
      const double floor_ms = (params * 2.0 + B * state_bytes_per_token) / ceil.bytes_per_s * 1e3;
      report(name, time_steps(), floor_ms, double(B));
      if (!without_logits) continue;
      for (auto& st : batch) st.logits = mhla::LogitsMode::none;
      report(name + " no logits", time_steps(), floor_ms, double(B));
      std::vector<mhla::Sampler> samplers;
      std::vector<mhla::DeviceSampling> sampled(B);
      for (const auto& [label, temperature, top_p] :
           {std::tuple{" sampled greedy", 0.0f, 1.0f}, std::tuple{" sampled top-p", 0.8f, 0.95f}}) {
        samplers.assign(B, mhla::Sampler(mhla::SamplingParams{temperature, 0, top_p}));
        for (int i = 0; i < B; ++i) {
          sampled[i] = {&samplers[i], {}};
          batch[i].sampling = &sampled[i];
        }
        report(name + label, time_steps(), floor_ms, double(B));
      }
      for (auto& st : batch) st.sampling = nullptr;
    }
  };
  for (long long N : {1024LL, 8192LL, 32768LL, 131072LL}) decode_figures(*dev, N, "", true);

  // What batch invariance costs: each sequence's step computed as if it were alone.
  if (wanted("model decode B=1 ctx=1024 batch-invariant") || wanted("model decode B=64 ctx=1024 batch-invariant")) {
    o.batch_invariant = true;
    const auto invariant = mhla::make_device_model(model, mhla::Device::cuda, o);
    decode_figures(*invariant, 1024, " batch-invariant", false);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mhla_bench_cuda_model: %s\n", e.what());
  return 1;
}
