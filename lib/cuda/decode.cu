// The batched decode step and the block-boundary recompute.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"
#include "mhla/error.hpp"

namespace mhla::cuda {

namespace {

// Block (sequence, kv head, row split). Thread (x, r) owns 4 adjacent value columns and the rows
// j = r, r + R, ... of its split's rows of P and A: A += k v^T and o_h += q_h (P + w A) for the G
// query heads of the group; the R row groups add their sums in shared memory. Splitting rows
// keeps enough loads in flight when few sequences decode.
template <class T, int G>
__global__ void decode_kernel(const T* q, const T* k, const T* v, float* o, DecodeArgs a) {
  extern __shared__ float sh[];
  float* kf = sh;                   // dk
  float* qf = sh + a.dk;            // G * dk
  float* red = qf + G * a.dk;       // R * G * dv partial sums
  const int b = blockIdx.x, g = blockIdx.y;
  const int R = blockDim.y, r = threadIdx.y;
  const long long pos = a.positions[b];
  const int flat = r * blockDim.x + threadIdx.x, nthreads = blockDim.x * R;
  // Features by all threads: rows of k, then of each query head.
  for (int part = 0; part <= G; ++part) {
    const T* in = part == 0 ? k + (static_cast<long long>(b) * a.kv_heads + g) * a.dk
                            : q + (static_cast<long long>(b) * a.heads + g * G + part - 1) * a.dk;
    float* out = part == 0 ? kf : qf + (part - 1) * a.dk;
    const float scale = part == 0 ? 1.0f : a.scale;
    const int half = a.dk / 2;
    for (int j = flat; j < (a.rotary ? half : a.dk); j += nthreads) {
      if (!a.rotary) {
        out[j] = phi(a.feature_map, load(in + j), a.eps) * scale;
        continue;
      }
      float sn, cs;
      rotary_sincos(static_cast<double>(pos), a.theta[j], &sn, &cs);
      const float x = phi(a.feature_map, load(in + j), a.eps) * scale;
      const float y = phi(a.feature_map, load(in + j + half), a.eps) * scale;
      out[j] = x * cs - y * sn;
      out[j + half] = y * cs + x * sn;
    }
  }
  __syncthreads();

  const int x = threadIdx.x * 4;
  const bool active = x < a.dv;
  const long long me = static_cast<long long>(a.dk) * a.dv;
  float* slot = a.pool + a.slots[b] * a.slot_stride;
  const float* P = slot + g * me;                                   // state slot 0
  float* A = slot + (static_cast<long long>(a.kv_heads) + g) * me;  // state slot 1
  float4 acc[G];
#pragma unroll
  for (int h = 0; h < G; ++h) acc[h] = make_float4(0, 0, 0, 0);
  if (active) {
    const T* vr = v + (static_cast<long long>(b) * a.kv_heads + g) * a.dv + x;
    const float v0 = load(vr), v1 = load(vr + 1), v2 = load(vr + 2), v3 = load(vr + 3);
    const float w = a.diagonal[b];
    const int chunk = (a.dk + a.splits - 1) / a.splits, first = blockIdx.z * chunk;
    const int end = first + chunk < a.dk ? first + chunk : a.dk;
#pragma unroll 4
    for (int j = first + r; j < end; j += R) {
      const long long off = static_cast<long long>(j) * a.dv + x;
      const float4 p = *reinterpret_cast<const float4*>(P + off);
      float4 s = *reinterpret_cast<const float4*>(A + off);
      const float kj = kf[j];
      s.x += kj * v0;
      s.y += kj * v1;
      s.z += kj * v2;
      s.w += kj * v3;
      *reinterpret_cast<float4*>(A + off) = s;
      const float4 m = make_float4(p.x + w * s.x, p.y + w * s.y, p.z + w * s.z, p.w + w * s.w);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float qj = qf[h * a.dk + j];
        acc[h].x += qj * m.x;
        acc[h].y += qj * m.y;
        acc[h].z += qj * m.z;
        acc[h].w += qj * m.w;
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h)
      *reinterpret_cast<float4*>(red + (static_cast<long long>(r) * G + h) * a.dv + x) = acc[h];
  }
  __syncthreads();
  if (!active || r != 0) return;
#pragma unroll
  for (int h = 0; h < G; ++h) {
    float4 sum = acc[h];
    for (int rr = 1; rr < R; ++rr) {
      const float4 e = *reinterpret_cast<const float4*>(red + (static_cast<long long>(rr) * G + h) * a.dv + x);
      sum.x += e.x;
      sum.y += e.y;
      sum.z += e.z;
      sum.w += e.w;
    }
    const long long at = (static_cast<long long>(b) * a.heads + g * G + h) * a.dv + x;
    float* out = a.splits == 1 ? o : a.partial + static_cast<long long>(blockIdx.z) * a.batch * a.heads * a.dv;
    *reinterpret_cast<float4*>(out + at) = sum;
  }
}

// o = the sum of the splits' partial outputs, in split order.
__global__ void add_splits_kernel(const float* partial, int splits, long long n, float* o) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float sum = 0.0f;
  for (int z = 0; z < splits; ++z) sum += partial[z * n + i];
  o[i] = sum;
}

// Block (kv head, element tile, sequence group): the closing sequences i = z, z + Z, ...
__global__ void close_blocks_kernel(CloseBlockArgs a) {
  const int g = blockIdx.x;
  const long long e = blockIdx.y * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (e >= a.matrix) return;
  const int count = *a.count;
  for (int i = blockIdx.z; i < count; i += gridDim.z) {
    float* slot = a.pool + a.slots[i] * a.slot_stride;
    auto at = [&](int state_slot) { return slot + (static_cast<long long>(state_slot) * a.kv_heads + g) * a.matrix + e; };
    const float running = *at(1);
    if (a.fold[i] >= 0) *at(2) += *at(a.fold[i]);
    if (a.push_to[i] >= 0)
      *at(a.push_to[i]) = running;
    else
      *at(2) += running;
    *at(1) = 0.0f;
    float p = 0.0f;
    for (int t = 0; t < a.max_terms; ++t) {
      const int s = a.term_slot[i * a.max_terms + t];
      if (s >= 0) p += a.term_weight[i * a.max_terms + t] * *at(s);
    }
    *at(0) = p;
  }
}

}  // namespace

template <class T>
void decode_step(const T* q, const T* k, const T* v, float* o, const DecodeArgs& a, cudaStream_t s) {
  if (a.batch == 0) return;
  const int G = a.heads / a.kv_heads;
  const unsigned columns = static_cast<unsigned>((a.dv / 4 + 31) / 32 * 32);
  // Row groups: up to 8, within 512 threads and 48 KB of shared memory.
  unsigned rows = 8;
  auto shared = [&](unsigned R) { return (static_cast<size_t>(a.dk) * (1 + G) + size_t{R} * G * a.dv) * sizeof(float); };
  while (rows > 1 && (columns * rows > 512 || shared(rows) > 48 * 1024 || rows > static_cast<unsigned>(a.dk))) rows /= 2;
  const dim3 grid(a.batch, a.kv_heads, a.splits), block(columns, rows);
  switch (G) {
    case 1: decode_kernel<T, 1><<<grid, block, shared(rows), s>>>(q, k, v, o, a); break;
    case 2: decode_kernel<T, 2><<<grid, block, shared(rows), s>>>(q, k, v, o, a); break;
    case 4: decode_kernel<T, 4><<<grid, block, shared(rows), s>>>(q, k, v, o, a); break;
    case 8: decode_kernel<T, 8><<<grid, block, shared(rows), s>>>(q, k, v, o, a); break;
    default:
      throw Error("the CUDA decode step handles 1, 2, 4 or 8 query heads per key/value head, not " + std::to_string(G));
  }
  MHLA_CUDA_LAUNCHED();
  if (a.splits > 1) {
    const long long n = static_cast<long long>(a.batch) * a.heads * a.dv;
    add_splits_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(a.partial, a.splits, n, o);
    MHLA_CUDA_LAUNCHED();
  }
}

int decode_splits(int batch, int kv_heads, int dk, int multiprocessors) {
  // Two blocks per multiprocessor, and at least 8 rows per split.
  const int want = 2 * multiprocessors / (batch * kv_heads);
  const int most = dk / 8 > 1 ? dk / 8 : 1;
  return want < 1 ? 1 : (want > most ? most : want);
}

void close_blocks(const CloseBlockArgs& a, cudaStream_t s) {
  if (a.max_count == 0) return;
  constexpr unsigned threads = 256;
  // Few sequences close in one step (one in C on average): a small z keeps an idle launch cheap.
  const dim3 grid(a.kv_heads, static_cast<unsigned>((a.matrix + threads - 1) / threads),
                  static_cast<unsigned>(a.max_count < 4 ? a.max_count : 4));
  close_blocks_kernel<<<grid, threads, 0, s>>>(a);
  MHLA_CUDA_LAUNCHED();
}

template void decode_step<float>(const float*, const float*, const float*, float*, const DecodeArgs&, cudaStream_t);
template void decode_step<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, float*,
                                         const DecodeArgs&, cudaStream_t);
template void decode_step<__half>(const __half*, const __half*, const __half*, float*, const DecodeArgs&, cudaStream_t);

}  // namespace mhla::cuda
