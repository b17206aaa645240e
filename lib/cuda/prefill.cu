// The prefill's bookkeeping kernels: the pointer tables of its batched products, the far-tile
// running sums, and the final state gathered into a slot, each one launch for all key/value
// heads; and the prefix a continued block's queries see.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"

namespace mhla::cuda {

namespace {

constexpr int kThreads = 256;
unsigned blocks_for(long long n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ long long summary_at(const PrefillLayout& l, int g, long long b) {
  return ((1 + static_cast<long long>(g) * l.tiles + b / l.tile_blocks) * l.region + b % l.tile_blocks) * l.matrix;
}

template <class T>
__global__ void pointers_kernel(PrefillPointerArgs<T> a) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const PrefillLayout& l = a.layout;
  const long long summaries = static_cast<long long>(l.kv_heads) * l.blocks;
  if (i < summaries) {
    const int g = static_cast<int>(i / l.blocks);
    const long long b = i % l.blocks;
    const long long row = b * l.C * l.kv_heads + g;
    a.table[i] = a.k + row * l.dk;
    a.table[summaries + i] =
        a.v_tail && b == l.blocks - 1 ? a.v_tail + static_cast<long long>(g) * l.dv : a.v + row * l.dv;
    a.table[2 * summaries + i] = a.summaries + summary_at(l, g, b);
    return;
  }
  // Sums of consecutive blocks straight from the features and values: K^T V over their rows.
  const long long j = i - summaries, sums = static_cast<long long>(l.kv_heads) * a.sum_tiles;
  if (j < sums) {
    const int g = static_cast<int>(j / a.sum_tiles);
    const long long row = (j % a.sum_tiles) * l.tile_blocks * l.C * l.kv_heads + g;
    const void** table = a.table + 3 * summaries;
    table[j] = a.k + row * l.dk;
    table[sums + j] = a.v + row * l.dv;
    table[2 * sums + j] = a.tile_sums + j * l.matrix;
    return;
  }
  const int g = static_cast<int>(j - sums);
  if (g >= l.kv_heads || a.loose_blocks == 0) return;
  const long long row = a.loose_from * l.C * l.kv_heads + g;
  const void** table = a.table + 3 * (summaries + sums);
  table[g] = a.k + row * l.dk;
  table[l.kv_heads + g] = a.v + row * l.dv;
  table[2 * l.kv_heads + g] = a.loose + static_cast<long long>(g) * l.matrix;
}

// E of tile t (t >= 2) is the mean of the (t-1) * tile_blocks blocks of tiles 0 .. t-2, summed
// in fp32: their sum grows with the sequence (past fp16's 65504 on long ones), their mean stays
// the size of one block's summary. Tiles 0 and 1 get zeros.
template <class T>
__global__ void far_sums_kernel(const float* tile_sums, int sum_tiles, T* summaries, PrefillLayout l) {
  const long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const int g = blockIdx.y;
  if (e >= l.matrix) return;
  const float* in = tile_sums + static_cast<long long>(g) * sum_tiles * l.matrix + e;
  float acc = 0.0f;
  for (int t = 0; t < l.tiles; ++t) {
    const float blocks = static_cast<float>(t >= 2 ? (t - 1) * l.tile_blocks : 1);
    store(summaries + ((1 + static_cast<long long>(g) * l.tiles + t) * l.region + l.tile_blocks) * l.matrix + e,
          acc / blocks);
    if (t >= 1 && t - 1 < sum_tiles) acc += in[(t - 1) * l.matrix];
  }
}

// Four elements per thread (dk * dv is a multiple of 4); blockIdx.y is the kv head and
// blockIdx.z the part: 0 the mixed prefix, 1 the running summary, 2 the tail, 3 + r the ring's
// r-th entry.
template <class T>
__global__ void final_state_kernel(FinalStateArgs<T> a) {
  struct alignas(4 * sizeof(T)) Pack {
    T e[4];
  };
  const PrefillLayout& l = a.layout;
  const long long e = 4 * (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x);
  if (e >= l.matrix) return;
  const int g = blockIdx.y, part = blockIdx.z;
  const int matrix_index = part == 0   ? a.prefix_index
                           : part == 1 ? a.running_index
                           : part == 2 ? a.tail_index
                                       : a.first_recent_index + part - 3;
  float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (part == 2) {
    if (a.loose) value = *reinterpret_cast<const float4*>(a.loose + static_cast<long long>(g) * l.matrix + e);
    for (int t = 0; t < a.tail_tiles; ++t) {
      const float4 x =
          *reinterpret_cast<const float4*>(a.tile_sums + (static_cast<long long>(g) * a.sum_tiles + t) * l.matrix + e);
      value.x += x.x, value.y += x.y, value.z += x.z, value.w += x.w;
    }
  } else {
    const T* in = part == 0 ? a.prefixes + (static_cast<long long>(g) * l.tiles * l.tile_blocks + a.last) * l.matrix
                  : part == 1 ? a.summaries + summary_at(l, g, a.last)
                              : a.summaries + summary_at(l, g, a.tail_end + part - 3);
    const Pack x = *reinterpret_cast<const Pack*>(in + e);
    value = make_float4(load(&x.e[0]), load(&x.e[1]), load(&x.e[2]), load(&x.e[3]));
  }
  *reinterpret_cast<float4*>(a.slot + (static_cast<long long>(matrix_index) * l.kv_heads + g) * l.matrix + e) = value;
}

template <class T>
__global__ void mixed_prefix_kernel(const float* p, const float* a, float w, long long n, T* out) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i < n) store(out + i, p[i] + w * a[i]);
}

}  // namespace

template <class T>
void mixed_prefix(const float* p, const float* a, float w, long long n, T* out, cudaStream_t s) {
  mixed_prefix_kernel<<<blocks_for(n), kThreads, 0, s>>>(p, a, w, n, out);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void prefill_pointers(const PrefillPointerArgs<T>& a, cudaStream_t s) {
  const long long n = static_cast<long long>(a.layout.kv_heads) * (a.layout.blocks + a.sum_tiles + 1);
  if (n == 0) return;
  pointers_kernel<<<blocks_for(n), kThreads, 0, s>>>(a);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void far_sums(const float* tile_sums, int sum_tiles, T* summaries, const PrefillLayout& l, cudaStream_t s) {
  far_sums_kernel<<<dim3(blocks_for(l.matrix), l.kv_heads), kThreads, 0, s>>>(tile_sums, sum_tiles, summaries, l);
  MHLA_CUDA_LAUNCHED();
}

template <class T>
void final_state(const FinalStateArgs<T>& a, cudaStream_t s) {
  final_state_kernel<<<dim3(blocks_for(a.layout.matrix / 4), a.layout.kv_heads, 3 + a.recent), kThreads, 0, s>>>(a);
  MHLA_CUDA_LAUNCHED();
}

template void mixed_prefix<float>(const float*, const float*, float, long long, float*, cudaStream_t);
template void mixed_prefix<__nv_bfloat16>(const float*, const float*, float, long long, __nv_bfloat16*, cudaStream_t);
template void mixed_prefix<__half>(const float*, const float*, float, long long, __half*, cudaStream_t);
template void prefill_pointers<float>(const PrefillPointerArgs<float>&, cudaStream_t);
template void prefill_pointers<__nv_bfloat16>(const PrefillPointerArgs<__nv_bfloat16>&, cudaStream_t);
template void prefill_pointers<__half>(const PrefillPointerArgs<__half>&, cudaStream_t);
template void far_sums<float>(const float*, int, float*, const PrefillLayout&, cudaStream_t);
template void far_sums<__nv_bfloat16>(const float*, int, __nv_bfloat16*, const PrefillLayout&, cudaStream_t);
template void far_sums<__half>(const float*, int, __half*, const PrefillLayout&, cudaStream_t);
template void final_state<float>(const FinalStateArgs<float>&, cudaStream_t);
template void final_state<__nv_bfloat16>(const FinalStateArgs<__nv_bfloat16>&, cudaStream_t);
template void final_state<__half>(const FinalStateArgs<__half>&, cudaStream_t);

}  // namespace mhla::cuda
