// The output of the whole-sequence prefill in one pass on the tensor cores (bf16 or fp16 inputs,
// fp32 accumulation): per block b and head h,
//   o_b = Q_b P_b + W[b][b] tril(Q_b K_b^T) V_b,
// written once. One thread block per output column slice of a block and head: it issues all of
// its 16-byte asynchronous copies at once (Q and K first, then the slices of P and V, which land
// while the scores are computed); each warp then owns a few 16 x 16 output tiles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include <cstdint>

#include "cuda/check.hpp"
#include "cuda/device_math.cuh"
#include "cuda/kernels.cuh"

namespace mhla::cuda {

namespace {

using namespace nvcuda;
using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
template <class T>
using RowA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <class T>
using RowB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <class T>
using ColB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
// Both 16-bit types share the shared-memory layout below.
constexpr size_t kElem = 2;
static_assert(sizeof(__nv_bfloat16) == kElem && sizeof(__half) == kElem);

constexpr int kWarps = 8;
constexpr int kSlice = 128;   // output columns per thread block
constexpr int kPad = 8;       // elements of padding per shared row (bank spread, 16-byte rows)
constexpr int kTiles = 4;     // output tiles per warp (2 x 2, or 1 x 4 when C = 16)

__host__ __device__ constexpr size_t align128(size_t x) { return (x + 127) / 128 * 128; }

// Byte offsets of the shared regions.
struct Layout {
  size_t q, k, s, v, p, stage, total;
  __host__ __device__ Layout(int C, int dk) {
    const size_t qk = align128(static_cast<size_t>(C) * (dk + kPad) * kElem);
    q = 0;
    k = q + qk;
    s = k + qk;
    v = s + align128(static_cast<size_t>(C) * (C + kPad) * kElem);
    p = v + align128(static_cast<size_t>(C) * (kSlice + kPad) * kElem);
    stage = p + align128(static_cast<size_t>(dk) * (kSlice + kPad) * kElem);
    total = stage + kWarps * 16 * 16 * sizeof(float);
  }
};

int slices_of(int dv) { return (dv + kSlice - 1) / kSlice; }

// rows x cols (cols a multiple of 8) from global (row stride ld) to shared (row stride lds).
template <class T>
__device__ void stage_tile(T* dst, int lds, const T* src, long long ld, int rows, int cols) {
  const int per_row = cols / 8;
  for (int c = threadIdx.x; c < rows * per_row; c += blockDim.x) {
    const int r = c / per_row, e = (c % per_row) * 8;
    __pipeline_memcpy_async(dst + r * lds + e, src + r * ld + e, 16);
  }
}

// TR: rows of output tiles per warp block (2, or 1 when C = 16); TC = kTiles / TR columns.
template <class T, int TR>
__global__ void __launch_bounds__(kWarps * 32) intra_block_kernel(IntraBlockArgs<T> a) {
  constexpr int TC = kTiles / TR;
  extern __shared__ __align__(128) unsigned char smem[];
  const int slices = (a.dv + kSlice - 1) / kSlice;
  const int b = static_cast<int>(blockIdx.x / slices), c0 = static_cast<int>(blockIdx.x % slices) * kSlice;
  const int h = blockIdx.y, C = a.C, dk = a.dk;
  const int g = h / (a.heads / a.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int RT = C / 16;
  const Layout lay(C, dk);
  T* qs = reinterpret_cast<T*>(smem + lay.q);
  T* ks = reinterpret_cast<T*>(smem + lay.k);
  T* sb = reinterpret_cast<T*>(smem + lay.s);
  T* vs = reinterpret_cast<T*>(smem + lay.v);
  T* ps = reinterpret_cast<T*>(smem + lay.p);
  float* stage = reinterpret_cast<float*>(smem + lay.stage) + warp * 256;
  const int ldq = dk + kPad, lds = C + kPad, ldv = kSlice + kPad;

  const long long row0 = static_cast<long long>(b) * C;
  const long long qld = static_cast<long long>(a.heads) * dk, kld = static_cast<long long>(a.kv_heads) * dk;
  const long long vld = static_cast<long long>(a.kv_heads) * a.dv, old = static_cast<long long>(a.heads) * a.dv;
  const bool partial = row0 + C > a.tokens;
  const T* vb = (partial ? a.v_tail : a.v + row0 * vld) + static_cast<long long>(g) * a.dv;
  const T* pb = a.p + g * a.p_stride + static_cast<long long>(b) * dk * a.dv;
  const int cw = a.dv - c0 < kSlice ? a.dv - c0 : kSlice, CTW = cw / 16;

  stage_tile(qs, ldq, a.q + row0 * qld + static_cast<long long>(h) * dk, qld, C, dk);
  stage_tile(ks, ldq, a.k + row0 * kld + static_cast<long long>(g) * dk, kld, C, dk);
  __pipeline_commit();
  stage_tile(ps, ldv, pb + c0, a.dv, dk, cw);
  stage_tile(vs, ldv, vb + c0, vld, C, cw);
  __pipeline_commit();
  __pipeline_wait_prior(1);
  __syncthreads();

  // Scores Q K^T on and below the diagonal, masked and weighted into T through the warp's
  // stage (tiles above the diagonal are never read).
  const float w = a.diag[b];
  for (int f = warp; f < RT * RT; f += kWarps) {
    const int r = f / RT, c = f % RT;
    if (c > r) continue;
    Acc acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < dk; kk += 16) {
      RowA<T> fa;
      ColB<T> fb;
      wmma::load_matrix_sync(fa, qs + r * 16 * ldq + kk, ldq);
      wmma::load_matrix_sync(fb, ks + c * 16 * ldq + kk, ldq);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(stage, acc, 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int rr = r * 16 + e / 16, cc = c * 16 + e % 16;
      store(sb + rr * lds + cc, cc > rr ? 0.0f : stage[e] * w);
    }
    __syncwarp();
  }
  __pipeline_wait_prior(0);
  __syncthreads();

  // Each warp owns a block of TR x TC output tiles: A fragments are reused across its columns
  // and B fragments across its rows. One block per warp in the shapes that matter (C = 64,
  // 128-column slices); some warps idle in smaller ones.
  const int col_blocks = (CTW + TC - 1) / TC, blocks = (RT / TR) * col_blocks;
  if (warp >= blocks) return;
  const int rt0 = (warp / col_blocks) * TR, ct0 = (warp % col_blocks) * TC;
  Acc acc[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) wmma::fill_fragment(acc[j], 0.0f);
  auto product = [&](const T* as, int lda, const T* bs, int ldb, int k_tiles, bool triangle) {
    for (int kk = 0; kk < k_tiles; ++kk) {
      RowA<T> fa[TR];
      RowB<T> fb[TC];
#pragma unroll
      for (int i = 0; i < TR; ++i) wmma::load_matrix_sync(fa[i], as + (rt0 + i) * 16 * lda + kk * 16, lda);
#pragma unroll
      for (int j = 0; j < TC; ++j) {
        if (ct0 + j >= CTW) break;
        wmma::load_matrix_sync(fb[j], bs + kk * 16 * ldb + (ct0 + j) * 16, ldb);
      }
#pragma unroll
      for (int i = 0; i < TR; ++i) {
        if (triangle && rt0 + i < kk) continue;  // score tiles right of the diagonal are zero
#pragma unroll
        for (int j = 0; j < TC; ++j) {
          if (ct0 + j >= CTW) break;
          wmma::mma_sync(acc[i * TC + j], fa[i], fb[j], acc[i * TC + j]);
        }
      }
    }
  };
  product(qs, ldq, ps, ldv, dk / 16, false);
  product(sb, lds, vs, ldv, rt0 + TR, true);
#pragma unroll
  for (int i = 0; i < TR; ++i)
#pragma unroll
    for (int j = 0; j < TC; ++j) {
      if (ct0 + j >= CTW) break;
      const int rt = rt0 + i, ct = ct0 + j;
      const Acc& r = acc[i * TC + j];
      float* ob = a.o + (row0 + rt * 16) * old + static_cast<long long>(h) * a.dv + c0 + ct * 16;
      if (!partial) {
        wmma::store_matrix_sync(ob, r, static_cast<unsigned>(old), wmma::mem_row_major);
        continue;
      }
      // The last block holds fewer than C tokens: rows past the end are not written.
      const long long valid = a.tokens - row0 - rt * 16;
      wmma::store_matrix_sync(stage, r, 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32)
        if (e / 16 < valid) ob[(e / 16) * old + e % 16] = stage[e];
      __syncwarp();
    }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }
bool aligned32(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 32 == 0; }

constexpr size_t kMaxShared = 227 * 1024;

}  // namespace

bool intra_block_supported(int C, int dk, int dv) {
  if (C != 16 && C != 32 && C != 64) return false;
  if (dk % 16 != 0 || dv % 16 != 0 || dk <= 0 || dv <= 0) return false;
  return Layout(C, dk).total <= kMaxShared;
}

template <class T>
bool intra_block_usable(const IntraBlockArgs<T>& a) {
  return intra_block_supported(a.C, a.dk, a.dv) && aligned16(a.q) && aligned16(a.k) && aligned16(a.v) &&
         aligned16(a.v_tail) && aligned16(a.p) && aligned32(a.o);
}

template <class T>
void intra_block(const IntraBlockArgs<T>& a, cudaStream_t s) {
  if (a.blocks == 0) return;
  const size_t shared = Layout(a.C, a.dk).total;
  const dim3 grid(static_cast<unsigned>(static_cast<long long>(a.blocks) * slices_of(a.dv)),
                  static_cast<unsigned>(a.heads));
  auto launch = [&](auto kernel) {
    MHLA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    kernel<<<grid, kWarps * 32, shared, s>>>(a);
  };
  if (a.C >= 32)
    launch(intra_block_kernel<T, 2>);
  else
    launch(intra_block_kernel<T, 1>);
  MHLA_CUDA_LAUNCHED();
}

template bool intra_block_usable<__nv_bfloat16>(const IntraBlockArgs<__nv_bfloat16>&);
template bool intra_block_usable<__half>(const IntraBlockArgs<__half>&);
template void intra_block<__nv_bfloat16>(const IntraBlockArgs<__nv_bfloat16>&, cudaStream_t);
template void intra_block<__half>(const IntraBlockArgs<__half>&, cudaStream_t);

}  // namespace mhla::cuda
