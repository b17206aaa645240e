#pragma once
// The MHLA language model on a CUDA GPU (DeviceModel): weights resident on the device, one
// GpuCausalOperator per layer holding the state slots, cuBLAS for every projection.
#include <memory>

#include "mhla/device.hpp"

namespace mhla::cuda {

std::unique_ptr<DeviceModel> make_gpu_model(const Model& model, const DeviceModelOptions& options);

}  // namespace mhla::cuda
