#pragma once
// The rotary frequencies base^(-2j/dk), j < dk/2, computed on the host in float64 as the CPU does
// and copied to the device once per operator (at least one entry, so the table always exists).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/buffer.hpp"

namespace mhla::cuda {

inline DeviceBuffer<double> rotary_frequencies(double base, int dk) {
  std::vector<double> th(std::max(dk / 2, 1));
  for (int j = 0; j < dk / 2; ++j) th[j] = std::pow(base, -2.0 * j / dk);
  DeviceBuffer<double> d(th.size());
  MHLA_CUDA_CHECK(cudaMemcpy(d.data(), th.data(), th.size() * sizeof(double), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace mhla::cuda
