// The output of the whole-sequence prefill in one pass on the tensor cores (bf16 inputs, fp32
// accumulation): per block b and head h, o_b = Q_b P_b + W[b][b] tril(Q_b K_b^T) V_b, written
// once. The scores of a block stay in shared memory; nothing else is staged.
#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>

#include "cuda/check.hpp"
#include "cuda/kernels.cuh"

namespace mhla::cuda {

namespace {

using namespace nvcuda;
using Bf16 = __nv_bfloat16;

constexpr int kWarps = 8;
constexpr int kMaxFragments = 8;  // 16 x 16 output tiles per warp
constexpr int kStage = 16 * 16;   // floats a warp stages to write a partial block's tile

__host__ __device__ size_t shared_bytes(int C) {
  const size_t scores = static_cast<size_t>(C) * C * sizeof(float);
  const size_t staging = static_cast<size_t>(kWarps) * kStage * sizeof(float);
  return (scores > staging ? scores : staging) + static_cast<size_t>(C) * (C + 8) * sizeof(Bf16);
}

__global__ void __launch_bounds__(kWarps * 32) intra_block_kernel(IntraBlockArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int b = blockIdx.x, h = blockIdx.y, C = a.C;
  const int g = h / (a.heads / a.kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int RT = C / 16;          // row tiles of a block
  const int per_row = kWarps / RT;  // warps sharing a row tile
  float* sf = reinterpret_cast<float*>(smem);
  Bf16* sb = reinterpret_cast<Bf16*>(smem + (shared_bytes(C) - static_cast<size_t>(C) * (C + 8) * sizeof(Bf16)));
  const int lds = C + 8;

  const long long row0 = static_cast<long long>(b) * C;
  const long long qld = static_cast<long long>(a.heads) * a.dk, kld = static_cast<long long>(a.kv_heads) * a.dk;
  const long long vld = static_cast<long long>(a.kv_heads) * a.dv, old = static_cast<long long>(a.heads) * a.dv;
  const bool partial = row0 + C > a.tokens;
  const Bf16* qb = a.q + row0 * qld + static_cast<long long>(h) * a.dk;
  const Bf16* kb = a.k + row0 * kld + static_cast<long long>(g) * a.dk;
  const Bf16* vb = (partial ? a.v_tail : a.v + row0 * vld) + static_cast<long long>(g) * a.dv;
  const Bf16* pb = a.p + g * a.p_stride + static_cast<long long>(b) * a.dk * a.dv;

  // Scores Q K^T, tiles above the diagonal skipped (the mask zeroes them).
  for (int f = warp; f < RT * RT; f += kWarps) {
    const int r = f / RT, c = f % RT;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    if (c <= r)
      for (int kk = 0; kk < a.dk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, Bf16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, Bf16, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, qb + r * 16 * qld + kk, static_cast<unsigned>(qld));
        wmma::load_matrix_sync(fb, kb + c * 16 * kld + kk, static_cast<unsigned>(kld));
        wmma::mma_sync(acc, fa, fb, acc);
      }
    wmma::store_matrix_sync(sf + r * 16 * C + c * 16, acc, C, wmma::mem_row_major);
  }
  __syncthreads();
  const float w = a.diag[b];
  for (int i = threadIdx.x; i < C * C; i += blockDim.x) {
    const int r = i / C, c = i % C;
    sb[r * lds + c] = __float2bfloat16(c > r ? 0.0f : sf[i] * w);
  }
  __syncthreads();

  // This warp's output tiles: row tile rt, column tiles ct0, ct0 + per_row, ...
  const int rt = warp / per_row, ct0 = warp % per_row, CT = a.dv / 16;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kMaxFragments];
#pragma unroll
  for (int j = 0; j < kMaxFragments; ++j) wmma::fill_fragment(acc[j], 0.0f);
  for (int kk = 0; kk < a.dk; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, Bf16, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, qb + rt * 16 * qld + kk, static_cast<unsigned>(qld));
#pragma unroll
    for (int j = 0; j < kMaxFragments; ++j) {
      const int ct = ct0 + j * per_row;
      if (ct >= CT) break;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, Bf16, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, pb + static_cast<long long>(kk) * a.dv + ct * 16, a.dv);
      wmma::mma_sync(acc[j], fa, fb, acc[j]);
    }
  }
  for (int kk = 0; kk <= rt * 16; kk += 16) {  // score columns past the diagonal tile are zero
    wmma::fragment<wmma::matrix_a, 16, 16, 16, Bf16, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, sb + rt * 16 * lds + kk, lds);
#pragma unroll
    for (int j = 0; j < kMaxFragments; ++j) {
      const int ct = ct0 + j * per_row;
      if (ct >= CT) break;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, Bf16, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, vb + kk * vld + ct * 16, static_cast<unsigned>(vld));
      wmma::mma_sync(acc[j], fa, fb, acc[j]);
    }
  }

  float* ob = a.o + (row0 + rt * 16) * old + static_cast<long long>(h) * a.dv;
  if (!partial) {
#pragma unroll
    for (int j = 0; j < kMaxFragments; ++j) {
      const int ct = ct0 + j * per_row;
      if (ct >= CT) break;
      wmma::store_matrix_sync(ob + ct * 16, acc[j], static_cast<unsigned>(old), wmma::mem_row_major);
    }
    return;
  }
  // The last block holds fewer than C tokens: its rows past the end are not written.
  __syncthreads();  // the scores area becomes staging
  float* stage = sf + warp * kStage;
  const long long valid = a.tokens - row0 - rt * 16;
#pragma unroll
  for (int j = 0; j < kMaxFragments; ++j) {
    const int ct = ct0 + j * per_row;
    if (ct >= CT) break;
    wmma::store_matrix_sync(stage, acc[j], 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < kStage; e += 32)
      if (e / 16 < valid) ob[(e / 16) * old + ct * 16 + e % 16] = stage[e];
    __syncwarp();
  }
}

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 32 == 0; }

}  // namespace

bool intra_block_supported(int C, int dk, int dv) {
  if (C != 16 && C != 32 && C != 64) return false;
  if (dk % 16 != 0 || dv % 16 != 0) return false;
  const int per_row = kWarps / (C / 16);
  return (dv / 16 + per_row - 1) / per_row <= kMaxFragments;
}

bool intra_block_usable(const IntraBlockArgs& a) {
  return intra_block_supported(a.C, a.dk, a.dv) && aligned(a.q) && aligned(a.k) && aligned(a.v) && aligned(a.v_tail) &&
         aligned(a.p) && aligned(a.o) && (a.p_stride * static_cast<long long>(sizeof(Bf16))) % 32 == 0;
}

void intra_block(const IntraBlockArgs& a, cudaStream_t s) {
  if (a.blocks == 0) return;
  const size_t shared = shared_bytes(a.C);
  const dim3 grid(static_cast<unsigned>(a.blocks), static_cast<unsigned>(a.heads));
  intra_block_kernel<<<grid, kWarps * 32, shared, s>>>(a);
  MHLA_CUDA_LAUNCHED();
}

}  // namespace mhla::cuda
