#pragma once
// Where the engine runs the model (--device, --precision). On the CPU every sequence's state is
// a ModelState and a step is one Model::forward. On a GPU every live sequence (a request's, each
// resident session's) holds one state slot of a DeviceModel and a step goes through
// DeviceModel::forward; turn starts, the prefix cache, checkpoints and sessions on disk keep the
// CPU form, downloaded from and uploaded to the slots.
//
// A device model runs one context policy, so the GPU holds one per policy in use, each with the
// same number of slots: the default policy's is made at start-up, another when a request first
// asks for its policy.
#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mhla/device.hpp"
#include "serve/config.hpp"
#include "serve/log.hpp"
#include "serve/sequence.hpp"

namespace mhla::serve {

// One sequence's share of an engine step; the logits asked for go to its next_logits.
struct SequenceRun {
  Sequence* seq = nullptr;
  std::span<const int> tokens;
  LogitsMode logits = LogitsMode::last;
  DeviceSampling* sampling = nullptr;  // on the GPU: the next token sampled there too
};

class Backend {
public:
  // Resolves config.device (auto: the GPU when this build has CUDA and one is present) and, on
  // the GPU, makes the default policy's device model. Throws mhla::Error when the GPU is not
  // available (a build without CUDA, a machine without a GPU) or cannot hold the model.
  Backend(const Model& model, const ServerConfig& config, Logger& log);
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  Device device() const { return device_; }
  bool on_device() const { return device_ != Device::cpu; }
  // The number format of the weights and activations (the CPU runs f32).
  DevicePrecision precision() const { return precision_; }
  // "cpu", or the GPU's name and precision.
  const std::string& description() const { return description_; }
  // State slots of each policy's device model (0 on the CPU).
  int slots() const { return slots_; }

  // Makes the policy's device model if it is not there yet; ApiError 503 when the GPU cannot
  // hold another one. Nothing to do on the CPU.
  void prepare(ContextPolicy policy);
  // A fresh sequence at position 0 (on the GPU: in a new slot of its policy's model).
  Sequence new_sequence(ContextPolicy policy);
  // Moves a sequence whose state is in the CPU form (read from disk or a checkpoint) into a
  // slot of its policy's model; nothing to do on the CPU.
  void place(Sequence& seq);
  // Changes the sequence's policy (strict to a slide policy: the state itself is the same); on
  // the GPU the state moves to a slot of that policy's model.
  void set_policy(Sequence& seq, ContextPolicy policy);

  // The parts of a step that run together: the whole batch on the CPU, one part per policy on
  // the GPU. Each part holds indices into batch, in order.
  std::vector<std::vector<std::size_t>> groups(std::span<const SequenceRun> batch) const;
  // Runs one part as Model::forward does: every sequence is checked before any state changes,
  // and a refusal throws with nothing moved.
  void forward(std::span<const SequenceRun> batch, std::span<const std::size_t> group) const;

private:
  DeviceModel& model_for(ContextPolicy policy);
  std::unique_ptr<DeviceModel> make(ContextPolicy policy) const;

  const Model& model_;
  long long chunk_;
  Logger& log_;
  Device device_ = Device::cpu;
  DevicePrecision precision_ = DevicePrecision::f32;
  bool batch_invariant_ = false;
  int slots_ = 0;
  std::string description_ = "cpu";
  std::array<std::unique_ptr<DeviceModel>, 3> models_;  // by ContextPolicy
};

}  // namespace mhla::serve
