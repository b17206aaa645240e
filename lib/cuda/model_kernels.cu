// The row-wise kernels of the model's layers: embedding lookup, RMSNorm, the q/k/v split, the
// gated per-head norm and SwiGLU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/model_kernels.cuh"

namespace mhla::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(long long n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Sum over the block; every thread gets the result. blockDim.x is a multiple of 32.
__device__ float block_sum(float x) {
  __shared__ float partial[32];
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
  return total;
}

template <class T>
__global__ void embed_kernel(const int* tokens, const T* e, long long rows, int width, float* x) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= rows * width) return;
  const long long r = i / width;
  x[i] = load(e + static_cast<long long>(tokens[r]) * width + i % width);
}

// One block per row.
template <class T>
__global__ void rms_norm_kernel(const float* x, long long x_stride, const float* w, int width, float eps, T* out) {
  const float* xr = x + blockIdx.x * x_stride;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < width; j += blockDim.x) ss += xr[j] * xr[j];
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(width) + eps);
  T* o = out + static_cast<long long>(blockIdx.x) * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) store(o + j, xr[j] * inv * w[j]);
}

template <class T>
__global__ void split_kernel(const T* proj, long long rows, int stride, int qw, int kw, int vw, T* q, T* k, T* v) {
  const int width = qw + kw + vw;
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= rows * width) return;
  const long long r = i / width;
  const int c = static_cast<int>(i % width);
  const T x = proj[r * stride + c];
  if (c < qw)
    q[r * qw + c] = x;
  else if (c < qw + kw)
    k[r * kw + c - qw] = x;
  else
    v[r * vw + c - qw - kw] = x;
}

// One block per (row, head).
template <class T>
__global__ void gated_norm_kernel(const float* o, const T* g, long long g_stride, const float* w, int heads, int dv,
                                  float eps, T* out) {
  const long long row = blockIdx.x / heads;
  const int h = static_cast<int>(blockIdx.x % heads);
  const long long at = row * heads * dv + static_cast<long long>(h) * dv;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < dv; j += blockDim.x) ss += o[at + j] * o[at + j];
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(dv) + eps);
  for (int j = threadIdx.x; j < dv; j += blockDim.x) {
    float y = o[at + j] * inv * w[j];
    if (g) {
      const float gv = load(g + row * g_stride + static_cast<long long>(h) * dv + j);
      y *= gv / (1.0f + expf(-gv));
    }
    store(out + at + j, y);
  }
}

template <class T>
__global__ void swiglu_kernel(const T* gu, long long rows, int inter, T* out) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= rows * inter) return;
  const long long r = i / inter;
  const int j = static_cast<int>(i % inter);
  const float gate = load(gu + r * 2 * inter + j), up = load(gu + r * 2 * inter + inter + j);
  store(out + i, gate / (1.0f + expf(-gate)) * up);
}

}  // namespace

template <class T>
void embed_rows(const int* tokens, const T* embeddings, long long rows, int width, float* x, cudaStream_t s) {
  if (rows <= 0) return;
  embed_kernel<<<blocks_for(rows * width), kThreads, 0, s>>>(tokens, embeddings, rows, width, x);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void rms_norm_rows(const float* x, long long x_stride, const float* weight, long long rows, int width, float eps, T* out,
                   cudaStream_t s) {
  if (rows <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, x_stride, weight, width, eps, out);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void split_qkv(const T* proj, long long rows, int stride, int qw, int kw, int vw, T* q, T* k, T* v, cudaStream_t s) {
  if (rows <= 0) return;
  split_kernel<<<blocks_for(rows * (qw + kw + vw)), kThreads, 0, s>>>(proj, rows, stride, qw, kw, vw, q, k, v);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void gated_head_norm(const float* o, const T* g, long long g_stride, const float* weight, long long rows, int heads,
                     int dv, float eps, T* out, cudaStream_t s) {
  if (rows <= 0) return;
  const int threads = dv >= 256 ? 256 : (dv >= 128 ? 128 : (dv >= 64 ? 64 : 32));
  gated_norm_kernel<<<static_cast<unsigned>(rows * heads), threads, 0, s>>>(o, g, g_stride, weight, heads, dv, eps,
                                                                            out);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void swiglu_rows(const T* gu, long long rows, int inter, T* out, cudaStream_t s) {
  if (rows <= 0) return;
  swiglu_kernel<<<blocks_for(rows * inter), kThreads, 0, s>>>(gu, rows, inter, out);
  MHLA_CUDA_LAUNCHED();
}

#define MHLA_MODEL_KERNELS(T)                                                                                    \
  template void embed_rows<T>(const int*, const T*, long long, int, float*, cudaStream_t);                      \
  template void rms_norm_rows<T>(const float*, long long, const float*, long long, int, float, T*, cudaStream_t); \
  template void split_qkv<T>(const T*, long long, int, int, int, int, T*, T*, T*, cudaStream_t);                \
  template void gated_head_norm<T>(const float*, const T*, long long, const float*, long long, int, int, float, T*, \
                                   cudaStream_t);                                                               \
  template void swiglu_rows<T>(const T*, long long, int, T*, cudaStream_t);
MHLA_MODEL_KERNELS(float)
MHLA_MODEL_KERNELS(__nv_bfloat16)
MHLA_MODEL_KERNELS(__half)
#undef MHLA_MODEL_KERNELS

}  // namespace mhla::cuda
