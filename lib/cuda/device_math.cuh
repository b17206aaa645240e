#pragma once
// Device helpers shared by the kernels: fp32/bf16 loads and stores, and the feature maps.
#include <cuda_bf16.h>

#include "mhla/options.hpp"

namespace mhla::cuda {

__device__ inline float load(const float* p) { return *p; }
__device__ inline float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline void store(float* p, float x) { *p = x; }
__device__ inline void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }

__device__ inline float phi(FeatureMap fm, float x, float eps) {
  switch (fm) {
    case FeatureMap::relu: return fmaxf(x, 0.0f);
    case FeatureMap::relu_eps: return fmaxf(x, 0.0f) + eps;
    case FeatureMap::elu1: return x > 0.0f ? x + 1.0f : expf(x);
    case FeatureMap::identity: return x;
  }
  return x;
}

}  // namespace mhla::cuda
