// CPU benchmarks of the whole model with random weights: prefill and decode tokens/s for a small
// configuration and the MHLA-340M layout, beside the weight-bandwidth floor of decode (every
// fp32 weight read once per token at the copy bandwidth measured in the same run).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "copy_bandwidth.hpp"
#include "mhla/model.hpp"

namespace {

double g_copy_bytes_per_second = 0;

struct Config {
  const char* name;
  mhla::ModelConfig config;
  int blocks;
};

mhla::ModelConfig small_config() {
  mhla::ModelConfig c;
  c.hidden_size = 256;
  c.num_layers = 4;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.vocab_size = 4096;
  c.intermediate_size = 768;
  return c;
}

mhla::ModelConfig config_340m() {
  mhla::ModelConfig c;  // the defaults are the research 340M configuration
  c.intermediate_size = 2816;
  return c;
}

const mhla::Model& model_for(const Config& c) {
  static std::vector<std::pair<std::string, std::unique_ptr<mhla::Model>>> cache;
  for (const auto& [name, m] : cache)
    if (name == c.name) return *m;
  cache.emplace_back(c.name, std::make_unique<mhla::Model>(mhla::Model::random(c.config, c.blocks, 1)));
  return *cache.back().second;
}

std::vector<int> random_ids(size_t n, int vocab) {
  std::vector<int> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int>((i * 7919 + 13) % static_cast<size_t>(vocab));
  return ids;
}

void BM_ModelPrefill(benchmark::State& st, Config c) {
  const auto& m = model_for(c);
  const auto ids = random_ids(static_cast<size_t>(st.range(0)), m.config().vocab_size);
  std::vector<float> logits;
  for (auto _ : st) {
    mhla::ModelState s = m.new_state(mhla::ContextPolicy::slide_mean);
    const mhla::SequenceStep step{&s, ids, mhla::LogitsMode::last, &logits};
    m.forward({&step, 1}, 256);
    benchmark::DoNotOptimize(logits.data());
  }
  st.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(ids.size() * st.iterations()), benchmark::Counter::kIsRate);
}

void BM_ModelDecode(benchmark::State& st, Config c) {
  const auto& m = model_for(c);
  const int batch = static_cast<int>(st.range(0));
  std::vector<mhla::ModelState> states;
  std::vector<std::vector<float>> logits(batch);
  const auto prompt = random_ids(64, m.config().vocab_size);
  for (int i = 0; i < batch; ++i) {
    states.push_back(m.new_state(mhla::ContextPolicy::slide_mean));
    const mhla::SequenceStep step{&states.back(), prompt, mhla::LogitsMode::none, nullptr};
    m.forward({&step, 1});
  }
  std::vector<int> next(batch, 5);
  std::vector<mhla::SequenceStep> steps;
  for (int i = 0; i < batch; ++i) steps.push_back({&states[i], {&next[i], 1}, mhla::LogitsMode::last, &logits[i]});
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    m.forward(steps);
    benchmark::DoNotOptimize(logits.data());
  }
  const double step_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(st.iterations());
  // Batch invariance makes each sequence read the weights itself on the CPU.
  const double floor_s = static_cast<double>(m.parameter_count()) * sizeof(float) * batch / (g_copy_bytes_per_second / 2);
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(batch) / step_s);
  st.counters["floor_tokens/s"] = benchmark::Counter(static_cast<double>(batch) / floor_s);
  st.counters["x_floor"] = benchmark::Counter(step_s / floor_s);
}

}  // namespace

int main(int argc, char** argv) {
  g_copy_bytes_per_second = measure_copy_bandwidth();
  benchmark::AddCustomContext("copy_GBps_read_plus_write", std::to_string(g_copy_bytes_per_second / 1e9));
  const Config configs[] = {{"small", small_config(), 8}, {"mhla340m", config_340m(), 32}};
  for (const auto& c : configs) {
    const bool big = std::string(c.name) == "mhla340m";
    benchmark::RegisterBenchmark((std::string("BM_ModelPrefill/") + c.name).c_str(), BM_ModelPrefill, c)
        ->Arg(big ? 512 : 2048)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(big ? 2 : 5);
    benchmark::RegisterBenchmark((std::string("BM_ModelDecode/") + c.name).c_str(), BM_ModelDecode, c)
        ->Arg(1)
        ->Arg(4)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(big ? 5 : 50);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
