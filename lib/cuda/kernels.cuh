#pragma once
// Launchers of the CUDA kernels of causal MHLA. Each declares only the host function; the
// kernels live in the matching .cu files.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "mhla/options.hpp"

namespace mhla::cuda {

// phi, rotary (rotate-half, angles in float64 on the device) and scale, row by row:
// in/out [rows][heads][d]; row r sits at position positions[r] if given, else first + r.
struct FeatureArgs {
  long long rows = 0;
  int heads = 0, d = 0;
  FeatureMap feature_map = FeatureMap::relu;
  float eps = 0, scale = 1;
  bool rotary = false;
  double base = 10000;
  long long first = 0;
  const long long* positions = nullptr;
  const double* theta = nullptr;  // [d/2]: base^(-2j/d), computed once on the host
};
template <class T>
void features(const T* in, T* out, const FeatureArgs& a, cudaStream_t s);

// Scores of the intra-block triangle, [blocks][C][C] (last block may have fewer rows/cols):
// zero above the diagonal and multiply block b by diag[b]. `n` is the columns in use.
template <class T>
void mask_scale_triangle(T* scores, int blocks, int C, const float* diag, cudaStream_t s);

// Element-wise conversion.
template <class From, class To>
void convert(const From* in, To* out, long long n, cudaStream_t s);

// Where the prefill keeps its block summaries: after one leading region of zeros, key/value head
// g's tile t is region 1 + g*tiles + t of `region` matrices: the tile's tile_blocks summaries,
// its far term E_t (the mean of the summaries two tiles back and more), then zeros up to a
// multiple of 4 (the tensor cores' alignment), so that the band product of every tile of every
// head reads [S_(t-1); E_(t-1); S_t; E_t] at one stride.
struct PrefillLayout {
  int kv_heads = 0, dk = 0, dv = 0, C = 0;
  long long blocks = 0;  // M = ceil(T / C)
  int tiles = 0, tile_blocks = 0, region = 0;
  long long matrix = 0;  // dk * dv
};

// Pointer tables of the batched products, built on the device, each as A, B and C tables: the
// summaries (kv_heads * blocks entries), the tile sums (kv_heads * sum_tiles), then the sum of
// the `loose_blocks` blocks from block loose_from on (kv_heads).
template <class T>
struct PrefillPointerArgs {
  PrefillLayout layout;
  const T* k = nullptr;       // features [blocks*C][Hkv][dk], zero past T
  const T* v = nullptr;       // [T][Hkv][dv]
  const T* v_tail = nullptr;  // the last block's rows, zero past T; null when that block is whole
  T* summaries = nullptr;
  float* tile_sums = nullptr;  // [Hkv][sum_tiles] matrices
  int sum_tiles = 0;
  long long loose_from = 0, loose_blocks = 0;
  float* loose = nullptr;  // [Hkv] matrices
  const void** table = nullptr;
};
template <class T>
void prefill_pointers(const PrefillPointerArgs<T>& a, cudaStream_t s);

// Writes every tile's E_t from the tile sums (zeros for t < 2).
template <class T>
void far_sums(const float* tile_sums, int sum_tiles, T* summaries, const PrefillLayout& layout, cudaStream_t s);

// The state after the prefill, into a slot (fp32): the last block's mixed prefix and running
// summary, the `recent` summaries before it into the ring in order, and the tail (blocks before
// tail_end = last - recent): whole tiles from their sums, plus the loose blocks' sum if any.
template <class T>
struct FinalStateArgs {
  PrefillLayout layout;
  const T* summaries = nullptr;
  const T* prefixes = nullptr;  // [Hkv][tiles*tile_blocks] matrices
  const float* tile_sums = nullptr;
  int sum_tiles = 0, tail_tiles = 0, recent = 0;
  long long last = 0, tail_end = 0;
  const float* loose = nullptr;  // [Hkv] matrices, or null
  float* slot = nullptr;  // matrix i of kv head g at slot + (i*Hkv + g)*matrix
  int prefix_index = 0, running_index = 0, tail_index = 0, first_recent_index = 0;
};
template <class T>
void final_state(const FinalStateArgs<T>& a, cudaStream_t s);

// out = P + w A over n elements (fp32 state matrices): what a block's queries see before its
// own triangle, with w the block's diagonal weight.
template <class T>
void mixed_prefix(const float* p, const float* a, float w, long long n, T* out, cudaStream_t s);

// The prefill's output in one tensor-core pass (T bf16 or fp16): for every block b and head h,
// o_b = Q_b P_b + diag[b] tril(Q_b K_b^T) V_b, written once in fp32.
template <class T>
struct IntraBlockArgs {
  long long tokens = 0;  // T
  int blocks = 0;        // ceil(T / C)
  int heads = 0, kv_heads = 0, dk = 0, dv = 0, C = 0;
  const T* q = nullptr;       // [blocks*C][H][dk] features, zero past T
  const T* k = nullptr;       // [blocks*C][Hkv][dk] features, zero past T
  const T* v = nullptr;       // [T][Hkv][dv]
  const T* v_tail = nullptr;  // [C][Hkv][dv]: the last partial block's rows, zero past T
  const T* p = nullptr;       // mixed prefixes: kv head g's block b at p + g*p_stride + b*dk*dv
  long long p_stride = 0;
  const float* diag = nullptr;  // [blocks]: W[b][b]
  float* o = nullptr;           // [T][H][dv]
};
// Shapes the kernel covers: C in {16, 32, 64}, dk and dv multiples of 16, within shared memory.
bool intra_block_supported(int C, int dk, int dv);
// ... and pointers aligned for the 16-byte copies and the fp32 tile stores (32 bytes).
template <class T>
bool intra_block_usable(const IntraBlockArgs<T>& a);
template <class T>
void intra_block(const IntraBlockArgs<T>& a, cudaStream_t s);

struct DecodeArgs {
  int batch = 0, heads = 0, kv_heads = 0, dk = 0, dv = 0;
  FeatureMap feature_map = FeatureMap::relu;
  float eps = 0, scale = 1;
  bool rotary = false;
  double base = 10000;
  float* pool = nullptr;           // state slots
  long long slot_stride = 0;       // floats per slot
  const int* slots = nullptr;      // [batch]
  const long long* positions = nullptr;  // [batch]: the token's position
  const float* diagonal = nullptr;       // [batch]: W[i][i] of its block
  const double* theta = nullptr;         // [dk/2] rotary frequencies
  // Few sequences leave most of the GPU idle: their rows of P and A are then split over `splits`
  // blocks, whose partial outputs ([splits][batch][heads][dv]) are added in order afterwards.
  int splits = 1;
  float* partial = nullptr;
};
// The row splits for `batch` sequences on `multiprocessors` SMs: about two blocks per SM, at
// least 8 rows each; splits * batch <= 2 * multiprocessors / kv_heads whenever splits > 1.
int decode_splits(int batch, int kv_heads, int dk, int multiprocessors);
// One token per sequence: A += k v^T, o = q (P + w A), in one pass over P and A.
template <class T>
void decode_step(const T* q, const T* k, const T* v, float* o, const DecodeArgs& a, cudaStream_t s);

struct CloseBlockArgs {
  int max_count = 0;             // sequences in the step (an upper bound of count)
  const int* count = nullptr;    // on the device: sequences whose block closes
  int kv_heads = 0;
  long long matrix = 0;          // dk * dv
  float* pool = nullptr;
  long long slot_stride = 0;
  int max_terms = 0;             // columns of the per-sequence term arrays
  const int* slots = nullptr;    // [count]
  const int* push_to = nullptr;  // [count]: state slot index receiving A (3 + ring index), -1: into the tail
  const int* fold = nullptr;     // [count]: state slot index folded into the tail first, or -1
  const int* term_slot = nullptr;      // [count][max_terms]: state slot index of each term, -1 unused
  const float* term_weight = nullptr;  // [count][max_terms]
};
// Closes full blocks: pushes A into the ring (folding the oldest into the tail), clears A and
// recomputes P = sum of weighted terms (recent summaries and the tail). The count is read on
// the device, so the launch's shape depends only on max_count.
void close_blocks(const CloseBlockArgs& a, cudaStream_t s);

// Rows of `width` elements picked by index: out[r] = in[from[r]] for r < rows (non-causal grid
// windows into block order and back).
template <class T>
void gather_rows(const T* in, T* out, const long long* from, long long rows, long long width, cudaStream_t s);

// The non-causal normalizer: row r, head h of o ([rows][heads][dv], block r / C) is divided by
// qd(r, h) . zmix(kv head of h, block) + eps, with qd [rows][heads][dk] and zmix
// [kv_heads][blocks][dk] (fp32).
struct NormalizeArgs {
  long long rows = 0;
  int heads = 0, kv_heads = 0, dk = 0, dv = 0, C = 0, blocks = 0;
  float eps = 0;
};
template <class T>
void normalize_rows(float* o, const T* qd, const float* zmix, const NormalizeArgs& a, cudaStream_t s);

}  // namespace mhla::cuda
