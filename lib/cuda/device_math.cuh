#pragma once
// Device helpers shared by the kernels: fp32/bf16/fp16 loads and stores, and the feature maps.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "mhla/options.hpp"

namespace mhla::cuda {

__device__ inline float load(const float* p) { return *p; }
__device__ inline float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline float load(const __half* p) { return __half2float(*p); }
__device__ inline void store(float* p, float x) { *p = x; }
__device__ inline void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }
__device__ inline void store(__half* p, float x) { *p = __float2half(x); }

__device__ inline float phi(FeatureMap fm, float x, float eps) {
  switch (fm) {
    case FeatureMap::relu: return fmaxf(x, 0.0f);
    case FeatureMap::relu_eps: return fmaxf(x, 0.0f) + eps;
    case FeatureMap::elu1: return x > 0.0f ? x + 1.0f : expf(x);
    case FeatureMap::identity: return x;
  }
  return x;
}

// cos and sin of the rotary angle t * theta: the product in float64 (in fp32 it is already off by
// ~4e-3 at t = 128K), reduced to [-pi, pi] in float64, then the fp32 functions, accurate to an
// ulp there and many times faster than the float64 ones.
__device__ inline void rotary_sincos(double t, double theta, float* s, float* c) {
  const double a = t * theta;
  const double r = a - rint(a * 0.15915494309189533577) * 6.28318530717958647693;
  sincosf(static_cast<float>(r), s, c);
}

}  // namespace mhla::cuda
