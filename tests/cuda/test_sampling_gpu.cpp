// Sampling on the device against Sampler::sample on the CPU: the kernel on random logits with
// ties and -inf entries, odd vocabularies and every rule (greedy, temperature, top-k, top-p,
// min-p, repetition penalty), bad logits; then the model's forward with sampling against the
// host Sampler over the same logits, and refusals that leave the sampler and state as they were.
//
// Tolerance: none, the ids must be the same. Both sides take the same random number and keep
// the same tokens; probabilities are float64 on both, summed in another order, which moves a
// partial sum by ~1e-16 relative: a draw would have to fall that close to a boundary to differ.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "cuda/sampling.cuh"
#include "device_memory.hpp"
#include "mhla/device.hpp"
#include "mhla/error.hpp"
#include "mhla/model.hpp"
#include "mhla/sampling.hpp"

using namespace mhla;

namespace {

const std::string kData = std::getenv("MHLA_TEST_DATA_DIR") ? std::getenv("MHLA_TEST_DATA_DIR") : MHLA_TEST_DATA_DIR;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Normal logits rounded to quarters, so equal values (ties) are common; some -inf.
std::vector<float> tied_logits(int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::uniform_int_distribution<int> masked(0, 9);
  std::vector<float> l(static_cast<size_t>(vocab));
  for (auto& x : l) x = masked(rng) == 0 ? kNegInf : std::round(d(rng) * 4.0f) / 4.0f;
  l[static_cast<size_t>(vocab) / 2] = 1.0f;  // at least one finite
  return l;
}

// Samples rows of `logits` (each `vocab` wide) on the device with the samplers' draws, in one
// launch with the rows taken in reverse order; checks the guard zones.
std::vector<cuda::SampleOutcome> device_sample(const std::vector<std::vector<float>>& logits, int vocab,
                                               std::vector<Sampler>& samplers, const std::vector<int>& history) {
  const int rows = static_cast<int>(logits.size());
  std::vector<float> flat;
  for (const auto& l : logits) flat.insert(flat.end(), l.begin(), l.end());
  flat.resize(flat.size() + test::kGuard, test::kSentinel);
  test::Device<float> d_logits(flat.size() - test::kGuard);
  REQUIRE(cudaMemcpy(d_logits.get(), flat.data(), flat.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);

  std::vector<cuda::SampleRow> args;
  std::vector<int> penalized;
  for (int r = 0; r < rows; ++r) {
    const int row = rows - 1 - r;
    const Sampler::Draw d = samplers[static_cast<size_t>(row)].draw(history, vocab);
    args.push_back(cuda::sample_row(samplers[static_cast<size_t>(row)].params(), d, row,
                                    static_cast<int>(penalized.size())));
    penalized.insert(penalized.end(), d.penalized.begin(), d.penalized.end());
  }
  penalized.push_back(0);  // never empty
  test::Device<cuda::SampleRow> d_args(args.size());
  test::Device<int> d_pen(penalized.size());
  test::Device<cuda::SampleOutcome> d_out(args.size());
  test::Device<double> scratch(args.size() * static_cast<size_t>(vocab));
  std::vector<cuda::SampleOutcome> out(args.size() + test::kGuard, {-7, cuda::SampleStatus::ok, 0.0f});
  REQUIRE(cudaMemcpy(d_args.get(), args.data(), args.size() * sizeof(args[0]), cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(d_pen.get(), penalized.data(), penalized.size() * sizeof(int), cudaMemcpyHostToDevice) ==
          cudaSuccess);
  REQUIRE(cudaMemcpy(d_out.get(), out.data(), out.size() * sizeof(out[0]), cudaMemcpyHostToDevice) == cudaSuccess);
  cuda::sample_rows(d_logits.get(), vocab, vocab, rows, d_args.get(), d_pen.get(), scratch.get(), d_out.get(), nullptr);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(out.data(), d_out.get(), out.size() * sizeof(out[0]), cudaMemcpyDeviceToHost) == cudaSuccess);
  std::vector<float> back(flat.size());
  REQUIRE(cudaMemcpy(back.data(), d_logits.get(), back.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
  for (size_t i = flat.size() - test::kGuard; i < flat.size(); ++i) REQUIRE(back[i] == test::kSentinel);
  for (size_t i = args.size(); i < out.size(); ++i) REQUIRE(out[i].id == -7);
  std::vector<cuda::SampleOutcome> by_row(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) by_row[static_cast<size_t>(rows - 1 - r)] = out[static_cast<size_t>(r)];
  return by_row;
}

SamplingParams params(float temperature, int top_k, float top_p, float min_p, float penalty, std::uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.repeat_penalty = penalty;
  p.repeat_window = 16;
  p.seed = seed;
  return p;
}

}  // namespace

TEST_CASE("device sampling picks Sampler::sample's ids: every rule, ties, -inf, odd vocabularies", "[gpu][sampling]") {
  const std::vector<SamplingParams> rules = {
      params(0.0f, 0, 1.0f, 0.0f, 1.0f, 1),    params(0.0f, 0, 1.0f, 0.0f, 1.3f, 2),   // greedy
      params(1.0f, 0, 1.0f, 0.0f, 1.0f, 3),    params(0.7f, 0, 1.0f, 0.0f, 1.0f, 4),   // temperature
      params(1.0f, 1, 1.0f, 0.0f, 1.0f, 5),    params(1.2f, 3, 1.0f, 0.0f, 1.0f, 6),   // top-k
      params(0.9f, 40, 1.0f, 0.0f, 1.0f, 7),   params(1.0f, 100000, 1.0f, 0.0f, 1.0f, 8),
      params(1.0f, 0, 0.1f, 0.0f, 1.0f, 9),    params(0.8f, 0, 0.9f, 0.0f, 1.0f, 10),  // top-p
      params(1.0f, 0, 1.0f, 0.05f, 1.0f, 11),  params(1.5f, 0, 1.0f, 0.3f, 1.0f, 12),  // min-p
      params(0.8f, 50, 0.95f, 0.02f, 1.3f, 13), params(2.0f, 7, 0.5f, 0.1f, 0.8f, 14),  // together
  };
  for (const int vocab : {1, 2, 5, 100, 1000, 4099, 32000, 50257}) {
    std::vector<int> history;
    for (int i = 0; i < 40; ++i) history.push_back((i * 7919) % vocab);
    std::vector<std::vector<float>> logits;
    std::vector<Sampler> cpu, gpu;
    for (size_t r = 0; r < rules.size(); ++r) {
      logits.push_back(tied_logits(vocab, static_cast<unsigned>(vocab * 31 + r)));
      cpu.emplace_back(rules[r]);
      gpu.emplace_back(rules[r]);
    }
    for (int draw = 0; draw < 12; ++draw) {
      const auto out = device_sample(logits, vocab, gpu, history);
      for (size_t r = 0; r < rules.size(); ++r) {
        INFO(fmt::format("vocab {}, rule {}, draw {}", vocab, r, draw));
        REQUIRE(out[r].status == cuda::SampleStatus::ok);
        CHECK(out[r].id == cpu[r].sample(logits[r], history));
      }
    }
    for (size_t r = 0; r < rules.size(); ++r) CHECK(gpu[r].save_rng() == cpu[r].save_rng());
  }
}

TEST_CASE("device sampling: equal logits (also -0 and +0) keep the lowest ids; bad logits are named",
          "[gpu][sampling]") {
  const int vocab = 3000;
  std::vector<Sampler> s{Sampler(params(1.0f, 5, 1.0f, 0.0f, 1.0f, 1)), Sampler(params(1.0f, 0, 0.0002f, 0.0f, 1.0f, 2)),
                         Sampler(params(0.5f, 0, 1.0f, 0.0f, 1.0f, 3)), Sampler(params(0.0f, 0, 1.0f, 0.0f, 1.0f, 4)),
                         Sampler(params(0.0f, 0, 1.0f, 0.0f, 1.0f, 5)), Sampler(params(1.0f, 1, 1.0f, 0.0f, 1.0f, 6))};
  std::vector<std::vector<float>> logits(6, std::vector<float>(vocab, 0.5f));
  logits[2][1234] = std::nanf("");
  logits[3][2999] = std::numeric_limits<float>::infinity();
  logits[4].assign(vocab, kNegInf);
  logits[5].assign(vocab, -5.0f);
  logits[5][0] = -0.0f, logits[5][1] = 0.0f;  // equal: a tie, which the lower id wins
  for (int draw = 0; draw < 20; ++draw) {
    const auto out = device_sample(logits, vocab, s, {});
    CHECK(out[0].id < 5);  // top-k of equal logits: ids 0..4
    CHECK(out[1].id == 0);  // top-p of equal probabilities: the lowest id reaches 0.0002 x 3000 < 1
    CHECK(out[2].status == cuda::SampleStatus::bad_logit);
    CHECK(out[2].id == 1234);
    CHECK(out[3].status == cuda::SampleStatus::bad_logit);
    CHECK(out[3].id == 2999);
    CHECK(out[4].status == cuda::SampleStatus::all_neg_inf);
    CHECK(out[5].id == 0);
  }
}

TEST_CASE("GPU model: sampling on the device picks what the Sampler picks from the same logits", "[gpu][model][sampling]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  for (const auto precision : {DevicePrecision::f32, DevicePrecision::bf16}) {
    DeviceModelOptions o;
    o.max_sequences = 8;
    o.policy = ContextPolicy::slide_mean;
    o.precision = precision;
    const auto dev = make_device_model(m, Device::cuda, o);
    // Four sequences twice: one copy returns logits for the host Sampler, the other samples on
    // the device; equal batches give equal logits.
    const std::vector<SamplingParams> rules = {params(0.0f, 0, 1.0f, 0.0f, 1.0f, 1), params(0.9f, 0, 1.0f, 0.0f, 1.2f, 2),
                                               params(1.1f, 20, 0.9f, 0.0f, 1.0f, 3),
                                               params(0.7f, 0, 0.8f, 0.05f, 1.1f, 4)};
    std::vector<DeviceSlot> host_side, device_side;
    std::vector<Sampler> host_samplers, device_samplers;
    std::vector<std::vector<int>> history;
    for (size_t i = 0; i < rules.size(); ++i) {
      host_side.emplace_back(*dev);
      device_side.emplace_back(*dev);
      host_samplers.emplace_back(rules[i]);
      device_samplers.emplace_back(rules[i]);
      history.push_back({static_cast<int>(i) + 1, 7, 3});
    }
    // The prompts: a prefill that samples (logits none) against one that returns logits.
    std::vector<int> next(rules.size());
    for (size_t i = 0; i < rules.size(); ++i) {
      const std::vector<int> prompt(13 + 5 * i, static_cast<int>(i) + 2);
      std::vector<float> logits;
      const DeviceStep a{host_side[i].slot(), prompt, LogitsMode::last, &logits};
      dev->forward({&a, 1});
      DeviceSampling ds{&device_samplers[i], history[i]};
      const DeviceStep b{device_side[i].slot(), prompt, LogitsMode::none, nullptr, &ds};
      dev->forward({&b, 1});
      next[i] = host_samplers[i].sample(logits, history[i]);
      CHECK(ds.error.empty());
      CHECK(ds.token == next[i]);
    }
    for (int step = 0; step < 24; ++step) {
      std::vector<std::vector<float>> logits(rules.size());
      std::vector<DeviceSampling> ds(rules.size());
      std::vector<DeviceStep> a, b;
      for (size_t i = 0; i < rules.size(); ++i) {
        history[i].push_back(next[i]);
        ds[i] = {&device_samplers[i], history[i]};
        a.push_back({host_side[i].slot(), {&next[i], 1}, LogitsMode::last, &logits[i]});
        b.push_back({device_side[i].slot(), {&next[i], 1}, LogitsMode::none, nullptr, &ds[i]});
      }
      dev->forward(a);
      dev->forward(b);
      for (size_t i = 0; i < rules.size(); ++i) {
        INFO(fmt::format("{}, sequence {}, step {}", to_string(precision), i, step));
        next[i] = host_samplers[i].sample(logits[i], history[i]);
        CHECK(ds[i].error.empty());
        CHECK(ds[i].token == next[i]);
      }
    }
    for (size_t i = 0; i < rules.size(); ++i) CHECK(host_samplers[i].save_rng() == device_samplers[i].save_rng());
  }
}

TEST_CASE("GPU model: a sampling refusal leaves every sampler and state as they were", "[gpu][model][sampling]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  const int V = m.config().vocab_size;
  DeviceModelOptions o;
  o.max_sequences = 2;
  o.policy = ContextPolicy::slide_mean;
  o.precision = DevicePrecision::f32;
  const auto dev = make_device_model(m, Device::cuda, o);
  DeviceSlot a(*dev), b(*dev);
  Sampler sa(params(0.8f, 0, 1.0f, 0.0f, 1.2f, 1)), sb(params(0.8f, 0, 1.0f, 0.0f, 1.2f, 2));
  const std::string rng_a = sa.save_rng(), rng_b = sb.save_rng();
  const std::vector<int> good{1, 2}, bad{1, V};
  const int token = 3;
  DeviceSampling da{&sa, good}, db{&sb, bad};
  const std::vector<DeviceStep> batch{{a.slot(), {&token, 1}, LogitsMode::none, nullptr, &da},
                                      {b.slot(), {&token, 1}, LogitsMode::none, nullptr, &db}};
  CHECK_THROWS_WITH(dev->forward(batch), Catch::Contains(fmt::format("history token {} is outside", V)));
  CHECK(sa.save_rng() == rng_a);
  CHECK(sb.save_rng() == rng_b);
  CHECK(dev->position(a.slot()) == 0);
  CHECK(dev->position(b.slot()) == 0);
  const DeviceStep none{a.slot(), {&token, 1}, LogitsMode::none, nullptr, nullptr};
  DeviceSampling empty;
  const DeviceStep no_sampler{a.slot(), {&token, 1}, LogitsMode::none, nullptr, &empty};
  CHECK_THROWS_WITH(dev->forward({&no_sampler, 1}), Catch::Contains("without a sampler"));
  dev->forward({&none, 1});
  CHECK(dev->position(a.slot()) == 1);
}
