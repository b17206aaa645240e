// The small-batch products of small_batch.cuh. A CTA of kWarps warps takes tiles of 8 weight
// rows; each warp covers every kWarps-th stretch of K, its lanes standing in an 8 x 4 grid: lane
// (g, t) streams 16-byte chunks of tile row g. The B input rows sit in shared memory, staged once
// per CTA, and the grid is one wave of CTAs walking the tiles, so the staging is paid once per
// CTA, not per tile. In bf16 and fp16 the tensor cores do the products (the batch is the
// M side of an m16n8k16 product, the 8 tile rows its N side); in fp32 the lanes use FMAs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/small_batch.cuh"
#include "mhla/error.hpp"

namespace mhla::cuda {

namespace {

constexpr int kWarps = 16, kThreads = 32 * kWarps;
constexpr int kBlocksPerSm = 2;               // CTAs an SM: caps registers at 64 a thread
constexpr int kRows = 8;                      // weight rows per tile: one per lane group g
constexpr int kSlots = 4 * kWarps;            // chunks of a row the CTA reads in one pass
constexpr int kDepth = 4;                     // passes each lane loads together
constexpr size_t kMaxStaged = 192 * 1024;     // bytes of input rows in shared memory
constexpr size_t kDefaultShared = 48 * 1024;  // above this a kernel must be allowed more
// Shared memory ahead of the input rows: the per-warp tile sums, twice (one barrier a tile then
// suffices), and the norm's per-warp sums of squares.
constexpr int kPartial = kWarps * kSmallBatchMax * kRows;
constexpr size_t kFixedShared = sizeof(float) * (2 * kPartial + kWarps * kSmallBatchMax);
static_assert(kFixedShared % 16 == 0, "the input rows are read as 16-byte chunks");

template <class T>
constexpr int kChunk = 16 / static_cast<int>(sizeof(T));  // elements in a 16-byte chunk

using Epi = SmallBatchEpilogue;

// The chunks of tile row r, or null past the end. A swiglu tile holds gate rows j..j+3 and the
// matching up rows, so both halves of an output meet in one tile.
template <class T>
__device__ const uint4* tile_row(const SmallBatchArgs<T>& a, int tile, int r) {
  int row;
  if (a.epilogue == Epi::swiglu) {
    const int inter = a.n / 2, j = tile * (kRows / 2) + r % (kRows / 2);
    if (j >= inter) return nullptr;
    row = r < kRows / 2 ? j : inter + j;
  } else {
    row = tile * kRows + r;
    if (row >= a.n) return nullptr;
  }
  return reinterpret_cast<const uint4*>(a.w + static_cast<long long>(row) * a.k);
}

// Chunks first, first + kSlots, ... of a row; zeros past its end. The weights are read once per
// step: streaming loads keep them from pushing the activations out of L2.
__device__ void load_chunks(uint4 (&buf)[kDepth], const uint4* row, int first, int chunks) {
#pragma unroll
  for (int u = 0; u < kDepth; ++u) {
    const int c = first + u * kSlots;
    buf[u] = row && c < chunks ? __ldcs(row + c) : make_uint4(0, 0, 0, 0);
  }
}

template <class T>
__device__ inline void mma(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  // A rows 8..15 (batch rows past 8) are zero.
  if constexpr (std::is_same_v<T, __half>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// The lane's running sums: 16-bit, the m16n8k16 accumulator (d[0], d[1] = y[batch g][rows 2t,
// 2t+1]; d[2], d[3] belong to batch rows 8..15 and stay zero); fp32, y[b][row g] for every b
// over the lane's chunks.
template <class T>
struct Sums {
  float v[std::is_same_v<T, float> ? kSmallBatchMax : 4];
};

// Adds the lane's chunks base + t, base + t + kSlots, ... of its row times the staged inputs.
// `base` is the warp's first chunk, so the rounds it skips are skipped by the whole warp (the
// tensor-core products need every lane).
template <class T>
__device__ void accumulate(Sums<T>& s, const uint4 (&w)[kDepth], const uint4* staged, int base, int chunks, int batch,
                           int g, int t) {
#pragma unroll
  for (int u = 0; u < kDepth; ++u) {
    if (base + u * kSlots >= chunks) break;
    const int c = base + u * kSlots + t;
    if constexpr (std::is_same_v<T, float>) {
      if (c >= chunks) continue;
#pragma unroll
      for (int b = 0; b < kSmallBatchMax; ++b) {
        if (b >= batch) break;
        const uint4 x = staged[b * chunks + c];
        float y = s.v[b];
        y = fmaf(__uint_as_float(w[u].x), __uint_as_float(x.x), y);
        y = fmaf(__uint_as_float(w[u].y), __uint_as_float(x.y), y);
        y = fmaf(__uint_as_float(w[u].z), __uint_as_float(x.z), y);
        s.v[b] = fmaf(__uint_as_float(w[u].w), __uint_as_float(x.w), y);
      }
    } else {
      // K is permuted alike on both sides: the lane's chunk elements 0-3 stand in one product's
      // k columns 2t, 2t+1, 2t+8, 2t+9, elements 4-7 in the next one's.
      const uint4 x = g < batch && c < chunks ? staged[g * chunks + c] : make_uint4(0, 0, 0, 0);
      mma<T>(s.v, x.x, x.y, w[u].x, w[u].y);
      mma<T>(s.v, x.z, x.w, w[u].z, w[u].w);
    }
  }
}

// The warp's share of the tile, as partial[b * kRows + r].
template <class T>
__device__ void write_partial(Sums<T>& s, float* partial, int g, int t) {
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int b = 0; b < kSmallBatchMax; ++b) {
      s.v[b] += __shfl_xor_sync(0xffffffffu, s.v[b], 1);
      s.v[b] += __shfl_xor_sync(0xffffffffu, s.v[b], 2);
      if (b % 4 == t) partial[b * kRows + g] = s.v[b];
    }
  } else {
    *reinterpret_cast<float2*>(partial + g * kRows + 2 * t) = make_float2(s.v[0], s.v[1]);
  }
#pragma unroll
  for (auto& v : s.v) v = 0.0f;
}

// Puts y = y[b][tile row r] where the epilogue wants it; `up` is y[b][tile row r + 4].
template <class T>
__device__ void finish(const SmallBatchArgs<T>& a, int tile, int b, int r, float y, float up) {
  if (a.epilogue == Epi::swiglu) {
    const int inter = a.n / 2, j = tile * (kRows / 2) + r;
    if (r < kRows / 2 && j < inter) store(a.out_t + b * inter + j, y / (1.0f + expf(-y)) * up);
    return;
  }
  const int n = tile * kRows + r;
  if (n >= a.n) return;
  if (a.epilogue == Epi::store_t)
    store(a.out_t + b * a.n + n, y);
  else if (a.epilogue == Epi::store_f32)
    a.out_f32[b * a.n + n] = y;
  else if (a.epilogue == Epi::add_f32)
    a.out_f32[b * a.n + n] += y;
  else if (n < a.n0)
    store(a.out0 + b * a.n0 + n, y);
  else if (n < a.n1)
    store(a.out1 + b * (a.n1 - a.n0) + n - a.n0, y);
  else if (n < a.n2)
    store(a.out2 + b * (a.n2 - a.n1) + n - a.n1, y);
  else
    store(a.out3 + b * (a.n - a.n2) + n - a.n2, y);
}

__device__ inline void store4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ inline void store4(__nv_bfloat16* p, float a, float b, float c, float d) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 v;
  v.x = *reinterpret_cast<const uint32_t*>(&lo);
  v.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = v;
}
__device__ inline void store4(__half* p, float a, float b, float c, float d) {
  const __half2 lo = __floats2half2_rn(a, b), hi = __floats2half2_rn(c, d);
  uint2 v;
  v.x = *reinterpret_cast<const uint32_t*>(&lo);
  v.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = v;
}

// fp16 holds at most 65504, less than x * norm_weight reaches on a large residual stream: there
// the rows are staged after a first pass for their sums of squares, multiplied by the power of
// two at or below their row scale (exactly, so they round as x * norm_weight would), and only
// the rest of the row scale is left for the sums.
template <class T>
constexpr bool kScaledRows = std::is_same_v<T, __half>;

// Row b's scale rsqrt(mean(x^2) + eps), as rms_norm_kernel computes it, from the warps' sums of
// squares.
__device__ inline float row_scale(const float (*red)[kSmallBatchMax], int b, int k, float eps) {
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) total += red[w][b];
  return rsqrtf(total / static_cast<float>(k) + eps);
}

// The power of two at or below x > 0: x with its mantissa cleared.
__device__ inline float power_of_two_below(float x) { return __uint_as_float(__float_as_uint(x) & 0x7f800000u); }

// The B input rows into shared memory as T: copied, or for the RMSNorm x * norm_weight, with
// each warp's share of every row's sum of squares in red. The row scale rsqrt(mean(x^2) + eps)
// is applied to the finished sums (see small_batch_kernel), so the rows need only one pass and
// no barrier of their own (but kScaledRows need two and one). Every CTA stages for itself; the
// rows are small.
template <class T>
__device__ void stage(const SmallBatchArgs<T>& a, T* staged, float (*red)[kSmallBatchMax]) {
  if (!a.norm_weight) {
    const int n = a.batch * (a.k / kChunk<T>);
    const uint4* src = reinterpret_cast<const uint4*>(a.in);
    for (int i = threadIdx.x; i < n; i += kThreads) reinterpret_cast<uint4*>(staged)[i] = __ldg(src + i);
    return;
  }
  const int k4 = a.k / 4;
  const float4 *x = reinterpret_cast<const float4*>(a.x), *nw = reinterpret_cast<const float4*>(a.norm_weight);
  float ss[kSmallBatchMax] = {};
  for (int i = threadIdx.x; i < k4; i += kThreads) {
    const float4 s = __ldg(nw + i);
#pragma unroll
    for (int b = 0; b < kSmallBatchMax; ++b)
      if (b < a.batch) {
        const float4 v = __ldg(x + b * k4 + i);
        ss[b] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        if constexpr (!kScaledRows<T>) store4(staged + b * a.k + 4 * i, v.x * s.x, v.y * s.y, v.z * s.z, v.w * s.w);
      }
  }
#pragma unroll
  for (int b = 0; b < kSmallBatchMax; ++b) {
    for (int off = 16; off > 0; off >>= 1) ss[b] += __shfl_xor_sync(0xffffffffu, ss[b], off);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32][b] = ss[b];
  }
  if constexpr (kScaledRows<T>) {
    __syncthreads();
    float f[kSmallBatchMax];
#pragma unroll
    for (int b = 0; b < kSmallBatchMax; ++b)
      f[b] = b < a.batch ? power_of_two_below(row_scale(red, b, a.k, a.eps)) : 0.0f;
    for (int i = threadIdx.x; i < k4; i += kThreads) {
      const float4 s = __ldg(nw + i);
#pragma unroll
      for (int b = 0; b < kSmallBatchMax; ++b)
        if (b < a.batch) {
          const float4 v = __ldg(x + b * k4 + i);
          store4(staged + b * a.k + 4 * i, v.x * f[b] * s.x, v.y * f[b] * s.y, v.z * f[b] * s.z, v.w * f[b] * s.w);
        }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) small_batch_kernel(const SmallBatchArgs<T> a, int tiles) {
  extern __shared__ uint4 shared[];
  // partial[parity][warp][b * kRows + r]: the warps' sums of a tile.
  auto partial = reinterpret_cast<float(*)[kWarps][kSmallBatchMax * kRows]>(shared);
  auto red = reinterpret_cast<float(*)[kSmallBatchMax]>(partial + 2);
  uint4* staged = shared + kFixedShared / 16;  // the input rows [B][K] in T
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int chunks = a.k / kChunk<T>, slot = 4 * warp + t;
  const int groups = ((chunks + kSlots - 1) / kSlots + kDepth - 1) / kDepth;  // load rounds a tile
  constexpr int kRound = kDepth * kSlots;

  int tile = blockIdx.x, group = 0, parity = 0;
  const uint4* row = tile_row(a, tile, g);
  uint4 cur[kDepth];
  // The weights are constant: their first loads go out before waiting for the previous kernel
  // (launched early, see small_batch_gemv) to finish writing the inputs, and stay in flight
  // while the inputs are staged. The next kernel may launch as soon as every CTA is here.
  load_chunks(cur, row, slot, chunks);
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  stage(a, reinterpret_cast<T*>(staged), red);
  __syncthreads();
  // The epilogue threads' row scale: the RMSNorm's rsqrt(mean(x^2) + eps), as rms_norm_kernel,
  // less the power of two scaled rows were staged with.
  float scale = 1.0f;
  if (a.norm_weight && threadIdx.x < kSmallBatchMax * kRows && threadIdx.x / kRows < a.batch) {
    scale = row_scale(red, threadIdx.x / kRows, a.k, a.eps);
    if constexpr (kScaledRows<T>) scale /= power_of_two_below(scale);
  }
  Sums<T> sums{};
  for (;;) {
    // The next round's loads go out before this round's arithmetic.
    int next_tile = tile, next_group = group + 1;
    const uint4* next_row = row;
    if (next_group == groups) {
      next_group = 0;
      next_tile += gridDim.x;
      next_row = tile_row(a, next_tile, g);
    }
    uint4 next[kDepth];
    load_chunks(next, next_row, next_group * kRound + slot, chunks);
    accumulate(sums, cur, staged, group * kRound + 4 * warp, chunks, a.batch, g, t);
    if (next_group == 0) {
      write_partial(sums, partial[parity][warp], g, t);
      __syncthreads();
      if (threadIdx.x < kSmallBatchMax * kRows) {  // warps 0 and 1: one thread per (b, r)
        float y = 0.0f;
        for (int w = 0; w < kWarps; ++w) y += partial[parity][w][threadIdx.x];
        y *= scale;
        const float up = __shfl_down_sync(0xffffffffu, y, kRows / 2);
        const int b = threadIdx.x / kRows;
        if (b < a.batch) finish(a, tile, b, threadIdx.x % kRows, y, up);
      }
      parity ^= 1;
      if (next_tile >= tiles) return;
    }
    tile = next_tile;
    group = next_group;
    row = next_row;
#pragma unroll
    for (int u = 0; u < kDepth; ++u) cur[u] = next[u];
  }
}

void require(bool ok, const char* what) {
  if (!ok) throw Error(std::string("small_batch_gemv: ") + what);
}

bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

template <class T>
bool small_batch_supported(int batch, int k) {
  return batch >= 1 && batch <= kSmallBatchMax && k > 0 && k % kChunk<T> == 0 &&
         static_cast<size_t>(batch) * k * sizeof(T) <= kMaxStaged;
}

template <class T>
void small_batch_gemv(const SmallBatchArgs<T>& a, cudaStream_t s) {
  if (a.batch == 0) return;
  require(small_batch_supported<T>(a.batch, a.k) && a.n > 0, "unsupported sizes");
  require(a.w && aligned(a.w), "the weights must be set and 16-byte aligned");
  if (a.x)
    require(a.norm_weight && !a.in && aligned(a.x) && aligned(a.norm_weight),
            "x needs norm_weight and no in, both 16-byte aligned");
  else
    require(a.in && !a.norm_weight && aligned(a.in), "in must be set (or x) and 16-byte aligned");
  switch (a.epilogue) {
    case Epi::store_t: require(a.out_t, "store_t needs out_t"); break;
    case Epi::store_f32:
    case Epi::add_f32: require(a.out_f32, "the fp32 epilogues need out_f32"); break;
    case Epi::split:
      require(0 <= a.n0 && a.n0 <= a.n1 && a.n1 <= a.n2 && a.n2 <= a.n, "split needs 0 <= n0 <= n1 <= n2 <= N");
      require((a.out0 || a.n0 == 0) && (a.out1 || a.n1 == a.n0) && (a.out2 || a.n2 == a.n1) && (a.out3 || a.n == a.n2),
              "split needs an output for each non-empty part");
      break;
    case Epi::swiglu: require(a.out_t && a.n % 2 == 0, "swiglu needs out_t and an even N"); break;
    default: require(false, "unknown epilogue");
  }

  const int tiles = a.epilogue == Epi::swiglu ? (a.n / 2 + kRows / 2 - 1) / (kRows / 2) : (a.n + kRows - 1) / kRows;
  const size_t shared = kFixedShared + static_cast<size_t>(a.batch) * a.k * sizeof(T);
  const auto kernel = small_batch_kernel<T>;
  if (shared > kDefaultShared)
    MHLA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  // One wave: as many CTAs as fit on the device at once, each walking tiles.
  int device = 0, sms = 0, per_sm = 0;
  MHLA_CUDA_CHECK(cudaGetDevice(&device));
  MHLA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  MHLA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared));
  require(per_sm > 0, "the kernel does not fit on this device");
  // Programmatic dependent launch: CTAs may start while the previous kernel in the stream is
  // still running, and load weights until griddepcontrol.wait.
  cudaLaunchAttribute early{};
  early.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(std::min(tiles, sms * per_sm)));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = shared;
  config.stream = s;
  config.attrs = &early;
  config.numAttrs = 1;
  MHLA_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, a, tiles));
  MHLA_CUDA_LAUNCHED();
}

#define MHLA_SMALL_BATCH(T)                                \
  template bool small_batch_supported<T>(int, int);        \
  template void small_batch_gemv<T>(const SmallBatchArgs<T>&, cudaStream_t);
MHLA_SMALL_BATCH(float)
MHLA_SMALL_BATCH(__nv_bfloat16)
MHLA_SMALL_BATCH(__half)
#undef MHLA_SMALL_BATCH

}  // namespace mhla::cuda
