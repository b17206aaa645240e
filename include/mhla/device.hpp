#pragma once
// Where a model runs: the CPU (the reference, always there) or an accelerator. A DeviceModel is
// a model resident on a device, with a pool of state slots: each sequence lives in one slot,
// so sequences come and go without reallocation, and its state moves to and from the CPU form
// (ModelState) for checkpoints and for resuming on the other backend.
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/sampling.hpp"

namespace mhla {

enum class Device { cpu, cuda };

// "cpu", "cuda", or "auto" (cuda when this build has CUDA and a GPU is present, else cpu).
Device parse_device(std::string_view name);
std::string_view to_string(Device device);
// True when this library was built with CUDA and a GPU can be used now (never throws).
bool cuda_available();

// Number format of a device model's weights and activations; accumulation, the residual stream
// and the recurrent state stay fp32. f16 carries 3 more significant bits than bf16 but holds
// values only up to 65504: a model whose weights or activations go past that needs bf16 or f32.
enum class DevicePrecision { f32, bf16, f16 };
DevicePrecision parse_device_precision(std::string_view name);  // "f32", "bf16" or "f16"
std::string_view to_string(DevicePrecision precision);

struct DeviceModelOptions {
  int max_sequences = 4;  // state slots
  ContextPolicy policy = ContextPolicy::strict;
  DevicePrecision precision = DevicePrecision::bf16;
  bool cuda_graphs = true;  // replay the decode step as one CUDA graph per batch size
  // A sequence's results do not depend on what else is in the batch: every decode step runs
  // each sequence through the same kernels with the same splits as if it were alone (the
  // matrix-vector kernels in groups of up to 8 rows instead of cuBLAS products for larger
  // batches), so its logits are bit for bit those of a step on its own. Costs throughput at
  // larger batches (bench/NOTES.md has the figures).
  bool batch_invariant = false;
};

// The next token sampled on the device from a step's last logits, so that only its id crosses
// to the host: Sampler::sample's rules with the sampler's parameters and random sequence, which
// advances as sample() would. Sums are taken in another order than on the CPU, so a draw that
// falls within rounding of a boundary between two tokens may pick the other one.
struct DeviceSampling {
  Sampler* sampler = nullptr;
  std::span<const int> history;  // for the repetition penalty, as sample()'s
  int token = -1;                // out: the id chosen, or -1 with `error`
  std::string error = {};        // out: sample()'s message for bad logits; the sampler is then as it was
};

// One sequence's share of a forward call on a device.
struct DeviceStep {
  int slot = -1;
  std::span<const int> tokens;
  LogitsMode logits = LogitsMode::last;
  std::vector<float>* logits_out = nullptr;  // resized to vocab (last) or tokens*vocab (all)
  DeviceSampling* sampling = nullptr;        // sample the next token here too (logits may be none)
};

class DeviceModel {
public:
  virtual ~DeviceModel() = default;

  virtual std::string description() const = 0;  // device name and precision, for logs
  virtual const Model& model() const = 0;
  virtual ContextPolicy policy() const = 0;
  virtual DevicePrecision precision() const = 0;
  virtual size_t slot_bytes() const = 0;  // device bytes of one sequence's state

  // A fresh slot (position 0); throws mhla::Error when all are in use.
  virtual int acquire() = 0;
  virtual void release(int slot) = 0;
  virtual long long position(int slot) const = 0;
  // Makes slot `to` a copy of slot `from` (a fork), on the device.
  virtual void copy(int from, int to) = 0;

  // Runs each sequence's tokens from its slot's position and writes the requested logits, as
  // Model::forward does on the CPU. Checks every sequence (token ids, the trained window under
  // strict) before any state changes.
  virtual void forward(std::span<const DeviceStep> batch) = 0;

  // The slot's state in the CPU form, and back (same model, same policy).
  virtual ModelState download(int slot) const = 0;
  virtual void upload(int slot, const ModelState& state) = 0;
};

// The model on a device; throws mhla::Error when the device is not available in this build or
// on this machine, or does not cover the model's options.
std::unique_ptr<DeviceModel> make_device_model(const Model& model, Device device, const DeviceModelOptions& options);

// A slot owned for as long as this object lives: copying it forks the sequence on the device.
class DeviceSlot {
public:
  DeviceSlot() = default;
  explicit DeviceSlot(DeviceModel& device) : device_(&device), slot_(device.acquire()) {}
  DeviceSlot(const DeviceSlot& other);
  DeviceSlot& operator=(const DeviceSlot& other);
  DeviceSlot(DeviceSlot&& other) noexcept;
  DeviceSlot& operator=(DeviceSlot&& other) noexcept;
  ~DeviceSlot();

  DeviceModel* device() const { return device_; }
  int slot() const { return slot_; }
  explicit operator bool() const { return device_ != nullptr; }

private:
  DeviceModel* device_ = nullptr;
  int slot_ = -1;
};

}  // namespace mhla
