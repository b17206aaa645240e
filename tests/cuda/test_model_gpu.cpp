// The language model on the GPU against the CPU model from the same weights: logits of
// whole-sequence prefill, decode steps and continued prefill, batched decode, state moved
// between the two backends, forks, sessions, and refusals.
//
// Tolerances: in f32 both backends do the same fp32 arithmetic in another order, so logits
// agree to about 1e-6 relative; 1e-4 leaves room for the deeper accumulations. In bf16 every
// weight and activation is rounded to 8 significant bits (relative 2^-9 = 2e-3 each); over a
// few layers that compounds to about 1e-2, so 4e-2 is allowed there. f16 rounds the same values
// to 11 significant bits (2^-12 = 2.4e-4 each): an eighth of bf16's error, so 5e-3.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>

#include "mhla/device.hpp"
#include "mhla/error.hpp"
#include "mhla/model.hpp"
#include "mhla/session.hpp"
#include "support/reference.hpp"

using namespace mhla;
using mhla::test::relative_error;

namespace {

// The test models; MHLA_TEST_DATA_DIR in the environment points elsewhere (a binary run on
// another machine than the one it was built on).
const std::string kData = std::getenv("MHLA_TEST_DATA_DIR") ? std::getenv("MHLA_TEST_DATA_DIR") : MHLA_TEST_DATA_DIR;

std::vector<int> random_ids(const Model& m, size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, m.config().vocab_size - 1);
  std::vector<int> ids(n);
  for (auto& id : ids) id = d(rng);
  return ids;
}

std::vector<float> cpu_prefill(const Model& m, ModelState& s, std::span<const int> ids, LogitsMode mode) {
  std::vector<float> out;
  const SequenceStep step{&s, ids, mode, &out};
  m.forward({&step, 1});
  return out;
}

std::vector<float> gpu_prefill(DeviceModel& d, int slot, std::span<const int> ids, LogitsMode mode) {
  std::vector<float> out;
  const DeviceStep step{slot, ids, mode, &out};
  d.forward({&step, 1});
  return out;
}

std::vector<float> decode_all(auto&& step, std::span<const int> ids) {
  std::vector<float> all;
  for (const int& id : ids) {
    const auto one = step(id);
    all.insert(all.end(), one.begin(), one.end());
  }
  return all;
}

size_t argmax_agreement(const std::vector<float>& a, const std::vector<float>& b, size_t V) {
  size_t same = 0;
  for (size_t r = 0; r < a.size() / V; ++r) {
    const auto ra = a.begin() + static_cast<long>(r * V), rb = b.begin() + static_cast<long>(r * V);
    same += std::max_element(ra, ra + static_cast<long>(V)) - ra == std::max_element(rb, rb + static_cast<long>(V)) - rb;
  }
  return same;
}

struct Case {
  const char* model;
  DevicePrecision precision;
  ContextPolicy policy;
  double tolerance;
};

}  // namespace

TEST_CASE("GPU model logits equal the CPU model's: prefill, decode and continued prefill", "[gpu][model]") {
  for (const Case& c : {Case{"tiny", DevicePrecision::f32, ContextPolicy::slide_mean, 1e-4},
                        Case{"tiny-gqa", DevicePrecision::f32, ContextPolicy::slide, 1e-4},
                        Case{"tiny", DevicePrecision::f32, ContextPolicy::strict, 1e-4},
                        Case{"tiny", DevicePrecision::bf16, ContextPolicy::slide_mean, 4e-2},
                        Case{"tiny-gqa", DevicePrecision::bf16, ContextPolicy::slide_mean, 4e-2},
                        Case{"tiny", DevicePrecision::f16, ContextPolicy::slide_mean, 5e-3},
                        Case{"tiny-gqa", DevicePrecision::f16, ContextPolicy::slide, 5e-3}}) {
    const Model m = Model::load(kData + "/models/" + c.model);
    const long long C = m.config().block_size, W = m.trained_window();
    // Under strict stay inside the window; otherwise go past it, across many block boundaries.
    const size_t n = static_cast<size_t>(c.policy == ContextPolicy::strict ? W - 3 : W + 3 * C + 5);
    const size_t split = static_cast<size_t>(C + 3);  // prefill, then decode, then continue
    const auto ids = random_ids(m, n, 7);
    DeviceModelOptions o;
    o.max_sequences = 1;  // the smallest step tables: a continued prefill's plan outgrows them
    o.policy = c.policy;
    o.precision = c.precision;
    const auto dev = make_device_model(m, Device::cuda, o);
    const size_t V = static_cast<size_t>(m.config().vocab_size);
    INFO(fmt::format("{} {} {}", c.model, to_string(c.precision), to_string(c.policy)));

    ModelState cs = m.new_state(c.policy);
    const DeviceSlot slot(*dev);
    const std::span<const int> all(ids);
    const auto first = all.subspan(0, split), middle = all.subspan(split, C), rest = all.subspan(split + C);
    const auto cpu_a = cpu_prefill(m, cs, first, LogitsMode::all);
    const auto gpu_a = gpu_prefill(*dev, slot.slot(), first, LogitsMode::all);
    CHECK(relative_error(gpu_a, cpu_a) < c.tolerance);
    const auto cpu_b = decode_all([&](int id) { return cpu_prefill(m, cs, {&id, 1}, LogitsMode::last); }, middle);
    const auto gpu_b = decode_all([&](int id) { return gpu_prefill(*dev, slot.slot(), {&id, 1}, LogitsMode::last); },
                                  middle);
    CHECK(relative_error(gpu_b, cpu_b) < c.tolerance);
    const auto cpu_c = cpu_prefill(m, cs, rest, LogitsMode::all);
    const auto gpu_c = gpu_prefill(*dev, slot.slot(), rest, LogitsMode::all);
    CHECK(relative_error(gpu_c, cpu_c) < c.tolerance);
    CHECK(dev->position(slot.slot()) == static_cast<long long>(n));
    if (c.precision == DevicePrecision::f32) {
      CHECK(argmax_agreement(gpu_c, cpu_c, V) == rest.size());
    } else {
      CHECK(argmax_agreement(gpu_c, cpu_c, V) >= rest.size() * 9 / 10);
    }
    // Decode again, from the graph captured before the continued prefill: what it reads must
    // still be where the step writes its tables.
    const auto tail = random_ids(m, 3, 8);
    const auto cpu_d = decode_all([&](int id) { return cpu_prefill(m, cs, {&id, 1}, LogitsMode::last); }, tail);
    const auto gpu_d = decode_all([&](int id) { return gpu_prefill(*dev, slot.slot(), {&id, 1}, LogitsMode::last); },
                                  tail);
    CHECK(relative_error(gpu_d, cpu_d) < c.tolerance);
  }
}

TEST_CASE("GPU model: a batched decode step equals each sequence alone", "[gpu][model]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  DeviceModelOptions o;
  o.max_sequences = 6;
  o.policy = ContextPolicy::slide_mean;
  o.precision = DevicePrecision::f32;
  const auto dev = make_device_model(m, Device::cuda, o);
  const size_t V = static_cast<size_t>(m.config().vocab_size);
  // Sequences at different positions, some on a block boundary, one fresh.
  const std::vector<size_t> lengths = {0, 1, 7, 8, 9, 41};
  std::vector<DeviceSlot> slots;
  std::vector<ModelState> cpu;
  for (size_t i = 0; i < lengths.size(); ++i) {
    slots.emplace_back(*dev);
    cpu.push_back(m.new_state(o.policy));
    const auto ids = random_ids(m, lengths[i], 100 + static_cast<unsigned>(i));
    if (!ids.empty()) {
      gpu_prefill(*dev, slots.back().slot(), ids, LogitsMode::none);
      cpu_prefill(m, cpu.back(), ids, LogitsMode::none);
    }
  }
  for (int step = 0; step < 12; ++step) {
    const auto next = random_ids(m, lengths.size(), 500 + static_cast<unsigned>(step));
    std::vector<std::vector<float>> out(lengths.size());
    std::vector<DeviceStep> batch;
    for (size_t i = 0; i < lengths.size(); ++i)
      batch.push_back({slots[i].slot(), {&next[i], 1}, LogitsMode::last, &out[i]});
    dev->forward(batch);
    for (size_t i = 0; i < lengths.size(); ++i) {
      const auto ref = cpu_prefill(m, cpu[i], {&next[i], 1}, LogitsMode::last);
      REQUIRE(out[i].size() == V);
      CHECK(relative_error(out[i], ref) < 1e-4);
    }
  }
}

TEST_CASE("GPU model: batch-invariant decode gives each sequence the logits of a step on its own", "[gpu][model]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  for (auto precision : {DevicePrecision::f32, DevicePrecision::bf16, DevicePrecision::f16}) {
    INFO(to_string(precision));
    DeviceModelOptions o;
    o.max_sequences = 32;  // 12 sequences and the forks of up to 12 of them
    o.policy = ContextPolicy::slide_mean;
    o.precision = precision;
    o.batch_invariant = true;
    const auto dev = make_device_model(m, Device::cuda, o);
    // 12 sequences (more than one group of the matrix-vector kernels) at different positions,
    // some on a block boundary, one fresh.
    const size_t B = 12;
    std::vector<DeviceSlot> slots;
    for (size_t i = 0; i < B; ++i) {
      slots.emplace_back(*dev);
      const auto ids = random_ids(m, i * 5, 300 + static_cast<unsigned>(i));
      if (!ids.empty()) gpu_prefill(*dev, slots.back().slot(), ids, LogitsMode::none);
    }
    for (int step = 0; step < 10; ++step) {
      const auto next = random_ids(m, B, 700 + static_cast<unsigned>(step));
      std::vector<std::vector<float>> alone(B), together(B);
      for (size_t i = 0; i < B; ++i) {
        const DeviceSlot fork = slots[i];
        const DeviceStep st{fork.slot(), {&next[i], 1}, LogitsMode::last, &alone[i]};
        dev->forward({&st, 1});
      }
      // Half the batch, then all of it: every size gives the same bits.
      for (size_t n : {B / 2, B}) {
        std::vector<DeviceSlot> forks(slots.begin(), slots.begin() + static_cast<long>(n));
        std::vector<DeviceStep> batch;
        for (size_t i = 0; i < n; ++i) batch.push_back({forks[i].slot(), {&next[i], 1}, LogitsMode::last, &together[i]});
        dev->forward(batch);
        for (size_t i = 0; i < n; ++i) {
          INFO("step " << step << ", sequence " << i << " of " << n);
          REQUIRE(together[i].size() == alone[i].size());
          CHECK(std::memcmp(together[i].data(), alone[i].data(), alone[i].size() * sizeof(float)) == 0);
        }
      }
      std::vector<DeviceStep> batch;
      for (size_t i = 0; i < B; ++i) batch.push_back({slots[i].slot(), {&next[i], 1}, LogitsMode::none, nullptr});
      dev->forward(batch);
    }
  }
}

TEST_CASE("GPU model: state moves to the CPU and back, and forks", "[gpu][model]") {
  const Model m = Model::load(kData + "/models/tiny");
  DeviceModelOptions o;
  o.max_sequences = 4;
  o.policy = ContextPolicy::slide_mean;
  o.precision = DevicePrecision::f32;
  const auto dev = make_device_model(m, Device::cuda, o);
  const long long W = m.trained_window();
  const auto ids = random_ids(m, static_cast<size_t>(W + 13), 3);
  const auto more = random_ids(m, 20, 4);

  // Prefilled on the GPU, continued on the CPU.
  DeviceSlot a(*dev);
  gpu_prefill(*dev, a.slot(), ids, LogitsMode::none);
  ModelState moved = dev->download(a.slot());
  ModelState ref = m.new_state(o.policy);
  cpu_prefill(m, ref, ids, LogitsMode::none);
  CHECK(moved.position() == ref.position());
  const auto on_cpu = cpu_prefill(m, moved, more, LogitsMode::all);
  const auto expect = cpu_prefill(m, ref, more, LogitsMode::all);
  CHECK(relative_error(on_cpu, expect) < 1e-4);

  // Prefilled on the CPU, continued on the GPU (decode steps).
  ModelState from_cpu = m.new_state(o.policy);
  cpu_prefill(m, from_cpu, ids, LogitsMode::none);
  DeviceSlot b(*dev);
  dev->upload(b.slot(), from_cpu);
  const auto on_gpu = decode_all([&](int id) { return gpu_prefill(*dev, b.slot(), {&id, 1}, LogitsMode::last); }, more);
  CHECK(relative_error(on_gpu, expect) < 1e-4);

  // A fork continues like the original, and the original is untouched by it.
  const DeviceSlot fork(a);
  const auto f1 = gpu_prefill(*dev, fork.slot(), more, LogitsMode::all);
  CHECK(relative_error(f1, expect) < 1e-4);
  const auto a1 = gpu_prefill(*dev, a.slot(), more, LogitsMode::all);
  CHECK(relative_error(a1, expect) < 1e-4);
  const DeviceSlot last(*dev);
  CHECK_THROWS_WITH(DeviceSlot(a), Catch::Contains("state slots are in use"));
}

TEST_CASE("GPU model: refusals leave the state as it was", "[gpu][model]") {
  const Model m = Model::load(kData + "/models/tiny");
  DeviceModelOptions o;
  o.precision = DevicePrecision::f32;
  const auto dev = make_device_model(m, Device::cuda, o);
  const DeviceSlot s(*dev);
  const auto ids = random_ids(m, static_cast<size_t>(m.trained_window() - 2), 9);
  gpu_prefill(*dev, s.slot(), ids, LogitsMode::none);
  const auto three = random_ids(m, 3, 10);
  CHECK_THROWS_AS(gpu_prefill(*dev, s.slot(), three, LogitsMode::last), RefusedError);
  const std::vector<int> bad = {1, m.config().vocab_size};
  CHECK_THROWS_WITH(gpu_prefill(*dev, s.slot(), bad, LogitsMode::last), Catch::Contains("outside the vocabulary"));
  CHECK_THROWS_WITH(gpu_prefill(*dev, s.slot() + 1, three, LogitsMode::last), Catch::Contains("not in use"));
  CHECK(dev->position(s.slot()) == m.trained_window() - 2);
  ModelState other = m.new_state(ContextPolicy::slide);
  CHECK_THROWS_WITH(dev->upload(s.slot(), other), Catch::Contains("policy"));
}

TEST_CASE("GPU model: a session on the device generates what the CPU session does", "[gpu][model]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  DeviceModelOptions o;
  o.policy = ContextPolicy::slide_mean;
  o.precision = DevicePrecision::f32;
  o.max_sequences = 2;
  const auto dev = make_device_model(m, Device::cuda, o);
  SessionOptions so;
  so.policy = o.policy;
  so.sampling.temperature = 0;
  Session cpu(m, nullptr, so);
  so.device = dev.get();
  Session gpu(m, nullptr, so);
  const auto prompt = random_ids(m, 19, 11);
  cpu.append(prompt);
  gpu.append(prompt);
  StopCriteria stop;
  stop.max_tokens = 40;
  stop.ignore_eos = true;
  const auto a = cpu.generate(stop);
  const auto b = gpu.generate(stop);
  CHECK(a.tokens == b.tokens);
  CHECK(gpu.position() == cpu.position());
  // The state read back from the device is the CPU's.
  CHECK(gpu.state().position() == cpu.state().position());
  Session fork = gpu;  // a second slot
  const auto c = fork.generate(stop);
  const auto d = cpu.generate(stop);
  CHECK(c.tokens == d.tokens);
}

TEST_CASE("GPU model: decode steps replayed from CUDA graphs equal the launched ones", "[gpu][model]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  for (const auto precision : {DevicePrecision::f32, DevicePrecision::bf16, DevicePrecision::f16}) {
    INFO(to_string(precision));
    DeviceModelOptions o;
    o.max_sequences = 4;
    o.policy = ContextPolicy::slide_mean;
    o.precision = precision;
    const auto graphs = make_device_model(m, Device::cuda, o);
    o.cuda_graphs = false;
    const auto plain = make_device_model(m, Device::cuda, o);
    std::vector<DeviceSlot> a, b;
    for (int i = 0; i < 4; ++i) {
      a.emplace_back(*graphs);
      b.emplace_back(*plain);
      const auto ids = random_ids(m, static_cast<size_t>(3 * i + 2), 40 + static_cast<unsigned>(i));
      gpu_prefill(*graphs, a.back().slot(), ids, LogitsMode::none);
      gpu_prefill(*plain, b.back().slot(), ids, LogitsMode::none);
    }
    // Batches of changing size and membership, across block boundaries and past the window.
    for (int step = 0; step < 3 * static_cast<int>(m.trained_window()); ++step) {
      const size_t n = 1 + static_cast<size_t>(step) % 4;
      const auto next = random_ids(m, n, 900 + static_cast<unsigned>(step));
      std::vector<std::vector<float>> x(n), y(n);
      std::vector<DeviceStep> bx, by;
      for (size_t i = 0; i < n; ++i) {
        const size_t who = (i + static_cast<size_t>(step)) % 4;
        bx.push_back({a[who].slot(), {&next[i], 1}, LogitsMode::last, &x[i]});
        by.push_back({b[who].slot(), {&next[i], 1}, LogitsMode::last, &y[i]});
      }
      graphs->forward(bx);
      plain->forward(by);
      for (size_t i = 0; i < n; ++i) REQUIRE(x[i] == y[i]);
    }
  }
}
