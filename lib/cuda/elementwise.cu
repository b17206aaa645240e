// Small element-wise kernels of the prefill: features, triangle masks and conversions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"

namespace mhla::cuda {

namespace {

// Block (rows blockDim.y at a time); thread x takes V consecutive rotary pairs (j, j + d/2) from
// j = V x on, of every head of its row, in V-element loads and stores: the angles' sines and
// cosines are computed once per row and pair, and no index needs a 64-bit division.
template <class T, int V>
__global__ void features_kernel(const T* in, T* out, FeatureArgs a) {
  struct alignas(V * sizeof(T)) Pack {
    T e[V];
  };
  const long long row = blockIdx.x * static_cast<long long>(blockDim.y) + threadIdx.y;
  if (row >= a.rows) return;
  const int half = a.rotary ? a.d / 2 : a.d;
  const long long base = row * a.heads * a.d;
  const double t = static_cast<double>(a.positions ? a.positions[row] : a.first + row);
  for (int j = threadIdx.x * V; j < half; j += blockDim.x * V) {
    float sn[V], cs[V];
    if (a.rotary)
#pragma unroll
      for (int e = 0; e < V; ++e) rotary_sincos(t, a.theta[j + e], &sn[e], &cs[e]);
    for (int h = 0; h < a.heads; ++h) {
      const long long at = base + static_cast<long long>(h) * a.d + j;
      const Pack x = *reinterpret_cast<const Pack*>(in + at);
      Pack rx;
      if (!a.rotary) {
#pragma unroll
        for (int e = 0; e < V; ++e) store(&rx.e[e], phi(a.feature_map, load(&x.e[e]), a.eps) * a.scale);
        *reinterpret_cast<Pack*>(out + at) = rx;
        continue;
      }
      const Pack y = *reinterpret_cast<const Pack*>(in + at + half);
      Pack ry;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float xf = phi(a.feature_map, load(&x.e[e]), a.eps) * a.scale;
        const float yf = phi(a.feature_map, load(&y.e[e]), a.eps) * a.scale;
        store(&rx.e[e], xf * cs[e] - yf * sn[e]);
        store(&ry.e[e], yf * cs[e] + xf * sn[e]);
      }
      *reinterpret_cast<Pack*>(out + at) = rx;
      *reinterpret_cast<Pack*>(out + at + half) = ry;
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

template <class From, class To>
__global__ void convert_kernel(const From* in, To* out, long long n) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i < n) store(out + i, load(in + i));
}

constexpr int kThreads = 256;
unsigned blocks_for(long long n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

template <class T>
void features(const T* in, T* out, const FeatureArgs& a, cudaStream_t s) {
  if (a.rows == 0 || a.heads == 0 || a.d == 0) return;
  const int half = a.rotary ? a.d / 2 : a.d;
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % (4 * sizeof(T)) == 0; };
  const int V = half % 4 == 0 && aligned(in) && aligned(out) ? 4 : 1;
  unsigned x = 1;  // threads per row: a power of two, so that rows fill the block evenly
  while (x < 128 && static_cast<int>(x) * V < half) x *= 2;
  const unsigned y = kThreads / x;
  const unsigned grid = static_cast<unsigned>((a.rows + y - 1) / y);
  if (V == 4)
    features_kernel<T, 4><<<grid, dim3(x, y), 0, s>>>(in, out, a);
  else
    features_kernel<T, 1><<<grid, dim3(x, y), 0, s>>>(in, out, a);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void mask_scale_triangle(T* scores, int blocks, int C, const float* diag, cudaStream_t s) {
  const long long n = static_cast<long long>(blocks) * C * C;
  if (n == 0) return;
  mask_scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(scores, blocks, C, diag);
  MHLA_CUDA_LAUNCHED();
}

template <class From, class To>
void convert(const From* in, To* out, long long n, cudaStream_t s) {
  if (n == 0) return;
  convert_kernel<<<blocks_for(n), kThreads, 0, s>>>(in, out, n);
  MHLA_CUDA_LAUNCHED();
}

template void features<float>(const float*, float*, const FeatureArgs&, cudaStream_t);
template void features<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, const FeatureArgs&, cudaStream_t);
template void features<__half>(const __half*, __half*, const FeatureArgs&, cudaStream_t);
template void mask_scale_triangle<float>(float*, int, int, const float*, cudaStream_t);
template void mask_scale_triangle<__nv_bfloat16>(__nv_bfloat16*, int, int, const float*, cudaStream_t);
template void mask_scale_triangle<__half>(__half*, int, int, const float*, cudaStream_t);
template void convert<float, float>(const float*, float*, long long, cudaStream_t);
template void convert<__nv_bfloat16, float>(const __nv_bfloat16*, float*, long long, cudaStream_t);
template void convert<float, __nv_bfloat16>(const float*, __nv_bfloat16*, long long, cudaStream_t);
template void convert<__half, float>(const __half*, float*, long long, cudaStream_t);
template void convert<float, __half>(const float*, __half*, long long, cudaStream_t);

}  // namespace mhla::cuda
