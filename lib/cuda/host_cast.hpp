#pragma once
// fp32 values on the host converted to a device storage type (float or bf16), for tables and
// weights copied to the GPU.
#include <cuda_bf16.h>

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

}  // namespace mhla::cuda
