#pragma once
// fp32 values on the host converted to a device storage type (float, bf16 or fp16), for tables
// and weights copied to the GPU, and back. The conversions are cuda_fp16.h's and cuda_bf16.h's
// host code: round to nearest even, past the type's range to infinity, NaN kept NaN.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mhla::cuda {

template <class T>
T host_cast(float x);
template <>
inline float host_cast<float>(float x) {
  return x;
}
template <>
inline __nv_bfloat16 host_cast<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
inline __half host_cast<__half>(float x) {
  return __float2half(x);
}

inline float host_float(float x) { return x; }
inline float host_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float host_float(__half x) { return __half2float(x); }

}  // namespace mhla::cuda
