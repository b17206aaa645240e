// Device selection and the slot handle; the CUDA device model itself lives in lib/cuda.
#include "mhla/device.hpp"

#include <fmt/format.h>
#include <utility>

#include "mhla/error.hpp"

#ifdef MHLA_HAVE_CUDA
#include "cuda/gpu_model.hpp"
#include "mhla/cuda.hpp"
#endif

namespace mhla {

bool cuda_available() {
#ifdef MHLA_HAVE_CUDA
  return cuda::device_count() > 0;
#else
  return false;
#endif
}

Device parse_device(std::string_view name) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  if (name == "auto") return cuda_available() ? Device::cuda : Device::cpu;
  throw Error(fmt::format("unknown device '{}': use cpu, cuda or auto", name));
}

std::string_view to_string(Device device) { return device == Device::cuda ? "cuda" : "cpu"; }

DevicePrecision parse_device_precision(std::string_view name) {
  if (name == "f32") return DevicePrecision::f32;
  if (name == "bf16") return DevicePrecision::bf16;
  if (name == "f16") return DevicePrecision::f16;
  throw Error(fmt::format("unknown device precision '{}': use bf16, f16 or f32", name));
}

std::string_view to_string(DevicePrecision precision) {
  switch (precision) {
    case DevicePrecision::f32: return "f32";
    case DevicePrecision::bf16: return "bf16";
    case DevicePrecision::f16: return "f16";
  }
  return "?";
}

std::unique_ptr<DeviceModel> make_device_model(const Model& model, Device device, const DeviceModelOptions& options) {
  if (device == Device::cpu)
    throw Error("the CPU runs the model itself (mhla::Model); a device model is for an accelerator");
#ifdef MHLA_HAVE_CUDA
  if (!cuda_available()) throw Error("--device cuda was asked for, but no CUDA GPU is available: use --device cpu");
  return cuda::make_gpu_model(model, options);
#else
  (void)model;
  (void)options;
  throw Error("this build of mhla has no CUDA backend (built without nvcc): use --device cpu");
#endif
}

DeviceSlot::DeviceSlot(const DeviceSlot& other) : device_(other.device_) {
  if (!device_) return;
  slot_ = device_->acquire();
  try {
    device_->copy(other.slot_, slot_);
  } catch (...) {
    device_->release(slot_);
    throw;
  }
}

DeviceSlot& DeviceSlot::operator=(const DeviceSlot& other) {
  if (this != &other) {
    DeviceSlot copy(other);
    *this = std::move(copy);
  }
  return *this;
}

DeviceSlot::DeviceSlot(DeviceSlot&& other) noexcept
    : device_(std::exchange(other.device_, nullptr)), slot_(std::exchange(other.slot_, -1)) {}

DeviceSlot& DeviceSlot::operator=(DeviceSlot&& other) noexcept {
  std::swap(device_, other.device_);
  std::swap(slot_, other.slot_);
  return *this;
}

DeviceSlot::~DeviceSlot() {
  if (device_) device_->release(slot_);
}

}  // namespace mhla
