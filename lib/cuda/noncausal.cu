// Kernels of the non-causal operator beyond the shared ones: the row gather that puts grid
// windows into block order (and the output back), and the normalizer.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"

namespace mhla::cuda {

namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void gather_rows_kernel(const T* in, T* out, const long long* from, long long rows, long long width) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= rows * width) return;
  const long long r = i / width, e = i - r * width;
  out[i] = in[from[r] * width + e];
}

// One warp per (row, head): the dot product over dk reduced across the warp, then the row of dv
// outputs scaled. A warp's threads share their (row, head), so they leave together and the
// shuffles see the whole warp.
template <class T>
__global__ void normalize_kernel(float* o, const T* qd, const float* zmix, NormalizeArgs a) {
  const long long w = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (w >= a.rows * a.heads) return;
  const long long r = w / a.heads;
  const int h = static_cast<int>(w - r * a.heads);
  const int g = h / (a.heads / a.kv_heads);
  const T* q = qd + w * a.dk;
  const float* z = zmix + (static_cast<long long>(g) * a.blocks + r / a.C) * a.dk;
  float den = 0.0f;
  for (int j = lane; j < a.dk; j += 32) den += load(q + j) * z[j];
  for (int off = 16; off > 0; off /= 2) den += __shfl_xor_sync(0xffffffffu, den, off);
  const float inv = 1.0f / (den + a.eps);
  float* out = o + w * a.dv;
  for (int x = lane; x < a.dv; x += 32) out[x] *= inv;
}

unsigned blocks_for(long long n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <class T>
void gather_rows(const T* in, T* out, const long long* from, long long rows, long long width, cudaStream_t s) {
  if (rows == 0 || width == 0) return;
  gather_rows_kernel<<<blocks_for(rows * width), kThreads, 0, s>>>(in, out, from, rows, width);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void normalize_rows(float* o, const T* qd, const float* zmix, const NormalizeArgs& a, cudaStream_t s) {
  if (a.rows == 0 || a.heads == 0) return;
  normalize_kernel<<<blocks_for(a.rows * a.heads * 32), kThreads, 0, s>>>(o, qd, zmix, a);
  MHLA_CUDA_LAUNCHED();
}

template void gather_rows<float>(const float*, float*, const long long*, long long, long long, cudaStream_t);
template void gather_rows<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, const long long*, long long, long long,
                                         cudaStream_t);
template void normalize_rows<float>(float*, const float*, const float*, const NormalizeArgs&, cudaStream_t);
template void gather_rows<__half>(const __half*, __half*, const long long*, long long, long long, cudaStream_t);
template void normalize_rows<__nv_bfloat16>(float*, const __nv_bfloat16*, const float*, const NormalizeArgs&,
                                            cudaStream_t);
template void normalize_rows<__half>(float*, const __half*, const float*, const NormalizeArgs&, cudaStream_t);

}  // namespace mhla::cuda
