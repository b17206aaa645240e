// Small element-wise kernels of the prefill: features, triangle masks, tile prefixes, sums and
// conversions.
#include <cuda_bf16.h>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"

namespace mhla::cuda {

namespace {

// Block (rows blockDim.y at a time); thread x takes the rotary pairs (j, j + d/2) for j = x,
// x + blockDim.x, ... of every head of its row: the angle's sine and cosine are computed once
// per row and pair, and no index needs a 64-bit division.
template <class T>
__global__ void features_kernel(const T* in, T* out, FeatureArgs a) {
  const long long row = blockIdx.x * static_cast<long long>(blockDim.y) + threadIdx.y;
  if (row >= a.rows) return;
  const int half = a.rotary ? a.d / 2 : a.d;
  const long long base = row * a.heads * a.d;
  const double t = static_cast<double>(a.positions ? a.positions[row] : a.first + row);
  for (int j = threadIdx.x; j < half; j += blockDim.x) {
    if (!a.rotary) {
      for (int h = 0; h < a.heads; ++h) {
        const long long at = base + static_cast<long long>(h) * a.d + j;
        store(out + at, phi(a.feature_map, load(in + at), a.eps) * a.scale);
      }
      continue;
    }
    float sn, cs;
    rotary_sincos(t, a.theta[j], &sn, &cs);
    for (int h = 0; h < a.heads; ++h) {
      const long long at = base + static_cast<long long>(h) * a.d + j;
      const float x = phi(a.feature_map, load(in + at), a.eps) * a.scale;
      const float y = phi(a.feature_map, load(in + at + half), a.eps) * a.scale;
      store(out + at, x * cs - y * sn);
      store(out + at + half, y * cs + x * sn);
    }
  }
}

template <class T>
__global__ void mask_scale_kernel(T* scores, int blocks, int C, const float* diag) {
  const long long idx = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (idx >= static_cast<long long>(blocks) * C * C) return;
  const int b = static_cast<int>(idx / (static_cast<long long>(C) * C));
  const int r = static_cast<int>((idx / C) % C), c = static_cast<int>(idx % C);
  store(scores + idx, c > r ? 0.0f : load(scores + idx) * diag[b]);
}

template <class T>
__global__ void tile_prefix_kernel(const float* in, T* out, int tiles, long long width) {
  const long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (e >= width) return;
  float acc = 0.0f;
  for (int t = 0; t < tiles; ++t) {
    store(out + t * width + e, acc);
    if (t >= 1) acc += in[(t - 1) * width + e];
  }
}

template <class From, class To>
__global__ void convert_kernel(const From* in, To* out, long long n) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i < n) store(out + i, load(in + i));
}

template <class From, class To>
__global__ void convert_strided_kernel(const From* in, long long in_stride, To* out, long long out_stride,
                                       long long width) {
  const long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (e < width) store(out + blockIdx.y * out_stride + e, load(in + blockIdx.y * in_stride + e));
}

template <class T>
__global__ void sum_matrices_kernel(const T* in, long long stride, int count, long long width, float weight,
                                    float* out, bool accumulate) {
  const long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (e >= width) return;
  float acc = 0.0f;
  for (int i = 0; i < count; ++i) acc += load(in + i * stride + e);
  out[e] = (accumulate ? out[e] : 0.0f) + weight * acc;
}

constexpr int kThreads = 256;
unsigned blocks_for(long long n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <class T>
void features(const T* in, T* out, const FeatureArgs& a, cudaStream_t s) {
  if (a.rows == 0 || a.heads == 0 || a.d == 0) return;
  const int half = a.rotary ? a.d / 2 : a.d;
  const unsigned x = half >= 128 ? 128u : static_cast<unsigned>((half + 31) / 32 * 32), y = kThreads / x;
  features_kernel<<<static_cast<unsigned>((a.rows + y - 1) / y), dim3(x, y), 0, s>>>(in, out, a);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void mask_scale_triangle(T* scores, int blocks, int C, const float* diag, cudaStream_t s) {
  const long long n = static_cast<long long>(blocks) * C * C;
  if (n == 0) return;
  mask_scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(scores, blocks, C, diag);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void tile_prefix_skip_one(const float* in, T* out, int tiles, long long width, cudaStream_t s) {
  tile_prefix_kernel<<<blocks_for(width), kThreads, 0, s>>>(in, out, tiles, width);
  MHLA_CUDA_LAUNCHED();
}

template <class From, class To>
void convert(const From* in, To* out, long long n, cudaStream_t s) {
  if (n == 0) return;
  convert_kernel<<<blocks_for(n), kThreads, 0, s>>>(in, out, n);
  MHLA_CUDA_LAUNCHED();
}

template <class From, class To>
void convert_strided(const From* in, long long in_stride, To* out, long long out_stride, int count, long long width,
                     cudaStream_t s) {
  if (count <= 0 || width == 0) return;
  convert_strided_kernel<<<dim3(blocks_for(width), count), kThreads, 0, s>>>(in, in_stride, out, out_stride, width);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void sum_matrices(const T* in, long long stride, int count, long long width, float weight, float* out,
                  bool accumulate, cudaStream_t s) {
  sum_matrices_kernel<<<blocks_for(width), kThreads, 0, s>>>(in, stride, count, width, weight, out, accumulate);
  MHLA_CUDA_LAUNCHED();
}

template void features<float>(const float*, float*, const FeatureArgs&, cudaStream_t);
template void features<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, const FeatureArgs&, cudaStream_t);
template void mask_scale_triangle<float>(float*, int, int, const float*, cudaStream_t);
template void mask_scale_triangle<__nv_bfloat16>(__nv_bfloat16*, int, int, const float*, cudaStream_t);
template void tile_prefix_skip_one<float>(const float*, float*, int, long long, cudaStream_t);
template void tile_prefix_skip_one<__nv_bfloat16>(const float*, __nv_bfloat16*, int, long long, cudaStream_t);
template void convert<float, float>(const float*, float*, long long, cudaStream_t);
template void convert<__nv_bfloat16, float>(const __nv_bfloat16*, float*, long long, cudaStream_t);
template void convert<float, __nv_bfloat16>(const float*, __nv_bfloat16*, long long, cudaStream_t);
template void convert_strided<float, float>(const float*, long long, float*, long long, int, long long,
                                            cudaStream_t);
template void convert_strided<__nv_bfloat16, float>(const __nv_bfloat16*, long long, float*, long long, int, long long,
                                                    cudaStream_t);
template void sum_matrices<float>(const float*, long long, int, long long, float, float*, bool, cudaStream_t);
template void sum_matrices<__nv_bfloat16>(const __nv_bfloat16*, long long, int, long long, float, float*, bool,
                                          cudaStream_t);

}  // namespace mhla::cuda
