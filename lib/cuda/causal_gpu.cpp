// GpuCausalOperator: the state pool, whole-sequence prefill and the batched decode step (host
// side; the kernels are in the .cu files).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <type_traits>
#include <fmt/format.h>

#include "cuda/buffer.hpp"
#include "cuda/check.hpp"
#include "cuda/gemm.hpp"
#include "cuda/host_cast.hpp"
#include "cuda/kernels.cuh"
#include "cuda/precision.hpp"
#include "cuda/rotary.hpp"
#include "cuda/pinned.hpp"
#include "mhla/cuda.hpp"

namespace mhla::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp p{};
  MHLA_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

namespace {

// Host-side bookkeeping of a slot, the same counters CausalState keeps.
struct SlotMeta {
  bool used = false;
  long long position = 0, folded = 0, tail = 0;
  int recent = 0, oldest = 0;
};


// The step's tables, at offsets fixed by the batch size B (so a captured launch stays valid):
// positions [B] (long long); slots [B], the closing count, then per closing sequence (up to B)
// its slot, push_to, fold and term slots [terms] (int); diagonals [B] and term weights
// [B][terms] (float).
struct StepLayout {
  size_t ints_at, floats_at, bytes;
  StepLayout(int B, int terms) {
    ints_at = static_cast<size_t>(B) * sizeof(long long);
    floats_at = ints_at + (static_cast<size_t>(B) * (4 + terms) + 1) * sizeof(int);
    bytes = floats_at + static_cast<size_t>(B) * (1 + terms) * sizeof(float);
  }
};

}  // namespace

struct GpuCausalOperator::Impl {
  CausalOptions opt;
  MixingWeights weights;
  Precision precision;
  int tile_blocks;
  int capacity;  // ring capacity, L - 2
  long long me;  // dk * dv
  long long slot_stride;
  std::vector<SlotMeta> meta;
  DeviceBuffer<float> pool;
  cublasHandle_t blas = nullptr;
  cudaStream_t own_stream = nullptr;
  cudaStream_t stream = nullptr;  // own_stream, or the caller's

  // Scratch, grown as needed.
  DeviceBuffer<char> qf, kf, S, P, scores, vtail;
  DeviceBuffer<float> tsum, unit;  // unit: 1.0f per head, the diagonal weight of pre-scaled scores
  DeviceBuffer<const void*> pointers;
  DeviceBuffer<double> theta;  // rotary frequencies base^(-2j/dk), as the CPU computes them

  // The weights a prefill of M blocks uses, built once per M: the band of each tile (one copy
  // per key/value head), with a row per block [W(i, tile t-1) | 0 | W(i, tile t) | n_t w_far(i)]
  // against [S_(t-1); E_(t-1); S_t; E_t] (zeros against the regions' padding; E_t the mean of
  // its n_t blocks), and the diagonal weights.
  struct PrefillTables {
    DeviceBuffer<char> band;
    int band_ld = 0;
    DeviceBuffer<float> diag;
  };
  std::map<long long, PrefillTables> table_cache;
  template <class T>
  const PrefillTables& tables(long long M);

  // Per-step tables of the decode step, in one pinned buffer copied with one transfer (sized
  // for the whole pool at construction, so its addresses never change).
  PinnedStep step;
  // The plan of a prefill from a non-zero position: its own buffer, as it grows with the
  // prompt and the decode step's addresses must not change once a graph holds them.
  PinnedStep plan;
  int multiprocessors = 1;
  DeviceBuffer<float> split_out;  // partial outputs of a decode step split over rows
  bool batch_invariant = false;

  int splits(int batch) const {
    const auto& L = opt.layout;
    return decode_splits(batch_invariant ? 1 : batch, L.kv_heads, L.dk, multiprocessors);
  }

  Impl(CausalOptions o, MixingWeights w, int max_sequences, Precision p, int tile)
      : opt(std::move(o)), weights(std::move(w)), precision(p), tile_blocks(tile) {
    opt.validate();
    const auto& L = opt.layout;
    if (opt.normalize) throw Error("the CUDA backend covers the unnormalized causal form; run normalized MHLA on the CPU");
    if (L.dv % 4 != 0) throw Error(fmt::format("the CUDA backend needs dv to be a multiple of 4, got {}", L.dv));
    if (const int g = L.group(); g != 1 && g != 2 && g != 4 && g != 8)
      throw Error(fmt::format("the CUDA backend handles 1, 2, 4 or 8 query heads per key/value head, not {}", g));
    if (opt.policy != ContextPolicy::strict && weights.blocks() < 2)
      throw Error("slide policies need a mixing matrix of at least 2 blocks");
    if (tile_blocks < weights.blocks())
      throw Error(fmt::format("the prefill tile ({} blocks) must hold at least L = {} blocks", tile_blocks, weights.blocks()));
    if (max_sequences <= 0) throw Error("the state pool needs at least one slot");
    if (device_count() == 0) throw Error("no CUDA device is available");
    capacity = recent_capacity(weights.blocks());
    me = static_cast<long long>(L.dk) * L.dv;
    slot_stride = (CausalState::kFirstRecent + capacity) * L.kv_heads * me;
    meta.resize(max_sequences);
    pool.resize(static_cast<size_t>(slot_stride) * max_sequences);
    step.host(StepLayout(max_sequences, capacity + 1).bytes);
    MHLA_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, 0));
    split_out.resize(static_cast<size_t>(2 * multiprocessors / L.kv_heads + 1) * L.heads * L.dv);
    theta = rotary_frequencies(opt.rotary_base, L.dk);
    const std::vector<float> ones(static_cast<size_t>(L.heads), 1.0f);
    unit.resize(ones.size());
    MHLA_CUDA_CHECK(cudaMemcpy(unit.data(), ones.data(), ones.size() * sizeof(float), cudaMemcpyHostToDevice));
    MHLA_CUBLAS_CHECK(cublasCreate(&blas));
    MHLA_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream, cudaStreamNonBlocking));
    stream = own_stream;
    MHLA_CUBLAS_CHECK(cublasSetStream(blas, stream));
  }
  ~Impl() {
    if (blas) cublasDestroy(blas);
    if (own_stream) cudaStreamDestroy(own_stream);
  }

  // Matrices per region of the prefill's summaries: a tile, its far sum, zeros to a multiple of 4.
  int region_blocks() const { return (tile_blocks + 1 + 3) / 4 * 4; }

  SlotMeta& slot(int s) {
    if (s < 0 || s >= static_cast<int>(meta.size()) || !meta[s].used)
      throw Error(fmt::format("state slot {} is not in use", s));
    return meta[s];
  }
  float* matrix(int s, int state_slot, int g) const {
    return pool.data() + s * slot_stride + (static_cast<long long>(state_slot) * opt.layout.kv_heads + g) * me;
  }
  cudaDataType_t dtype() const { return cuda_type(precision); }

  void check_window(long long position, long long tokens) const {
    const long long window = static_cast<long long>(weights.blocks()) * opt.block_size;
    if (opt.policy == ContextPolicy::strict && position + tokens > window)
      throw RefusedError(fmt::format("token position {} is past the trained window of {} tokens; under the strict "
                                     "policy nothing past the window is computed: use slide or slide_mean",
                                     std::max(position, window), window));
  }

  template <class T>
  void prefill(int s, const T* q, const T* k, const T* v, long long tokens, float* o);
  template <class T>
  void extend(int s, const T* q, const T* k, const T* v, long long tokens, float* o);
  // When slot s's current block is full: the host's bookkeeping of closing it, written as the
  // index-th closing sequence into the integer and term-weight tables of a step of `batch`
  // sequences (StepLayout); the close_blocks kernel does the rest. False when not full.
  bool close_if_full(int s, int index, int batch, int* ints, float* term_weights);
  template <class T>
  void output_by_products(const T* Qf, const T* Kf, const T* v, const T* v_tail, const T* Pall, long long p_stride,
                          const float* diag, long long tokens, float* o);
  // A decode step in two halves: the host's bookkeeping and the step's tables (prepare), then
  // the copy of the tables and the kernels (launch), whose shapes depend only on the batch
  // size, so a CUDA graph can capture the launch and replay it after each prepare.
  void decode_prepare(std::span<const int> slots);
  template <class T>
  void decode_launch(int batch, const T* q, const T* k, const T* v, float* o);
};

template <class T>
const GpuCausalOperator::Impl::PrefillTables& GpuCausalOperator::Impl::tables(long long M) {
  if (auto it = table_cache.find(M); it != table_cache.end()) return it->second;
  if (table_cache.size() >= 16) table_cache.clear();  // bounded: a server sees many lengths
  const int TT = tile_blocks, R = region_blocks(), ld = 2 * R, Hkv = opt.layout.kv_heads;
  const int nt = static_cast<int>((M + TT - 1) / TT);
  const size_t per_head = static_cast<size_t>(nt) * TT * ld;
  std::vector<T> band(per_head * Hkv, host_cast<T>(0.0f));
  std::vector<float> dg(M);
  for (long long i = 0; i < M; ++i) {
    const int t = static_cast<int>(i / TT), ii = static_cast<int>(i % TT);
    dg[i] = static_cast<float>(effective_weight(weights, opt.policy, i, i));
    T* row = band.data() + (static_cast<size_t>(t) * TT + ii) * ld;
    for (int jj = 0; jj < 2 * TT; ++jj) {
      const long long b = static_cast<long long>(t - 1) * TT + jj;
      if (b >= 0 && b < i)
        row[jj < TT ? jj : R + jj - TT] =
            host_cast<T>(static_cast<float>(effective_weight(weights, opt.policy, i, b)));
    }
    if (t >= 2)
      row[R + TT] = host_cast<T>(static_cast<float>(effective_weight(weights, opt.policy, i, 0) * (t - 1) * TT));
  }
  for (int g = 1; g < Hkv; ++g) std::copy_n(band.begin(), per_head, band.begin() + static_cast<long long>(g * per_head));
  PrefillTables& tab = table_cache[M];
  tab.band_ld = ld;
  tab.band.resize(band.size() * sizeof(T));
  MHLA_CUDA_CHECK(cudaMemcpy(tab.band.data(), band.data(), band.size() * sizeof(T), cudaMemcpyHostToDevice));
  tab.diag.resize(dg.size());
  MHLA_CUDA_CHECK(cudaMemcpy(tab.diag.data(), dg.data(), dg.size() * sizeof(float), cudaMemcpyHostToDevice));
  return tab;
}

template <class T>
void GpuCausalOperator::Impl::prefill(int s, const T* q, const T* k, const T* v, long long T_, float* o) {
  SlotMeta& m = slot(s);
  if (m.position != 0)
    throw Error(fmt::format("GPU prefill starts from a fresh slot; slot {} is at position {}", s, m.position));
  check_window(0, T_);
  if (T_ <= 0) return;
  const auto& L = opt.layout;
  const int H = L.heads, Hkv = L.kv_heads, dk = L.dk, dv = L.dv, C = opt.block_size;
  const int TT = tile_blocks, R = region_blocks();
  const long long M = (T_ + C - 1) / C, Mf = T_ / C, rem = T_ - Mf * C;
  const int nt = static_cast<int>((M + TT - 1) / TT);
  const auto dt = dtype();
  const size_t el = sizeof(T);

  // Features, padded to whole blocks with zero rows (the products read whole blocks).
  const long long padded = M * C;
  qf.resize(padded * H * dk * el);
  kf.resize(padded * Hkv * dk * el);
  T* Qf = reinterpret_cast<T*>(qf.data());
  T* Kf = reinterpret_cast<T*>(kf.data());
  if (padded > T_) {
    MHLA_CUDA_CHECK(cudaMemsetAsync(Qf + T_ * H * dk, 0, (padded - T_) * H * dk * el, stream));
    MHLA_CUDA_CHECK(cudaMemsetAsync(Kf + T_ * Hkv * dk, 0, (padded - T_) * Hkv * dk * el, stream));
  }
  FeatureArgs fa{T_, H, dk, opt.feature_map, opt.eps, opt.effective_scale(), opt.rotary, opt.rotary_base, 0, nullptr,
                 theta.data()};
  features(q, Qf, fa, stream);
  fa.heads = Hkv;
  fa.scale = 1.0f;
  features(k, Kf, fa, stream);
  // The last block's values padded with zero rows, so that it too is a whole block.
  const T* v_tail = nullptr;
  if (rem > 0) {
    vtail.resize(static_cast<size_t>(C) * Hkv * dv * el);
    MHLA_CUDA_CHECK(cudaMemsetAsync(vtail.data(), 0, static_cast<size_t>(C) * Hkv * dv * el, stream));
    MHLA_CUDA_CHECK(cudaMemcpyAsync(vtail.data(), v + Mf * C * Hkv * dv, rem * Hkv * dv * el,
                                    cudaMemcpyDeviceToDevice, stream));
    v_tail = reinterpret_cast<const T*>(vtail.data());
  }

  const PrefillTables& tab = tables<T>(M);
  const PrefillLayout lay{Hkv, dk, dv, C, M, nt, TT, R, me};
  // Summaries: a leading region of zeros, then each head's tiles (PrefillLayout). The blocks past
  // M in each head's last tile are zeroed too: the band product reads them with zero weights.
  S.resize((1 + static_cast<size_t>(Hkv) * nt) * R * me * el);
  P.resize(static_cast<size_t>(Hkv) * nt * TT * me * el);
  T* Sall = reinterpret_cast<T*>(S.data());
  T* Pall = reinterpret_cast<T*>(P.data());
  MHLA_CUDA_CHECK(cudaMemsetAsync(Sall, 0, R * me * el, stream));
  if (R > TT + 1)
    MHLA_CUDA_CHECK(cudaMemset2DAsync(Sall + (R + TT + 1) * me, R * me * el, 0, (R - TT - 1) * me * el,
                                      static_cast<size_t>(Hkv) * nt, stream));
  if (const long long past = static_cast<long long>(nt) * TT - M; past > 0)
    MHLA_CUDA_CHECK(cudaMemset2DAsync(Sall + (static_cast<long long>(nt) * R + M - (nt - 1LL) * TT) * me,
                                      static_cast<size_t>(nt) * R * me * el, 0, past * me * el, Hkv, stream));

  // Whole tiles enter as sums, K_tile^T V_tile in fp32: the far terms E (the mean of the tiles
  // two back and more) and the final state's tail, whose blocks past its whole tiles are one
  // more such sum.
  const long long last = M - 1, tail_end = std::max(0LL, last - capacity);
  const int recent = static_cast<int>(last - tail_end);
  const int tail_tiles = static_cast<int>(tail_end / TT);
  const int sum_tiles = std::max(nt - 2, tail_tiles);
  const long long loose_from = static_cast<long long>(tail_tiles) * TT, loose_blocks = tail_end - loose_from;
  tsum.resize((static_cast<size_t>(sum_tiles) + 1) * Hkv * me);
  float* loose = tsum.data() + static_cast<size_t>(sum_tiles) * Hkv * me;
  pointers.resize(3 * static_cast<size_t>(Hkv) * (M + sum_tiles + 1));
  prefill_pointers(PrefillPointerArgs<T>{lay, Kf, v, v_tail, Sall, tsum.data(), sum_tiles, loose_from, loose_blocks,
                                         loose, pointers.data()},
                   stream);
  const void* const* sp = pointers.data();
  const long long nS = static_cast<long long>(Hkv) * M;
  const RowMajorGemm summaries{true, false, dk, dv, C, nullptr, Hkv * dk, 0, nullptr, Hkv * dv, 0, nullptr, dv, 0,
                               static_cast<int>(nS)};
  gemm_pointers(blas, summaries, sp, dt, dt);
  const long long nT = static_cast<long long>(Hkv) * sum_tiles;
  const RowMajorGemm sums{true, false, dk, dv, C * TT, nullptr, Hkv * dk, 0, nullptr, Hkv * dv, 0, nullptr, dv, 0,
                          static_cast<int>(nT)};
  gemm_pointers(blas, sums, sp + 3 * nS, dt, CUDA_R_32F);
  const RowMajorGemm loose_sum{true, false, dk, dv, static_cast<int>(loose_blocks * C), nullptr, Hkv * dk, 0, nullptr,
                               Hkv * dv, 0, nullptr, dv, 0, Hkv};
  gemm_pointers(blas, loose_sum, sp + 3 * (nS + nT), dt, CUDA_R_32F);
  far_sums(tsum.data(), sum_tiles, Sall, lay, stream);

  // Mixed prefixes of every tile of every head in one product: P = band x [S_(t-1); E_(t-1);
  // S_t; E_t] (the band's table repeats per head, so one stride covers them all).
  const long long p_stride = static_cast<long long>(nt) * TT * me;
  const RowMajorGemm band{false, false, TT, static_cast<int>(me), 2 * R, tab.band.data(), tab.band_ld,
                          static_cast<long long>(TT) * tab.band_ld, Sall, me, R * me, Pall, me, TT * me, Hkv * nt};
  gemm(blas, band, dt, dt);

  // The output: one fused tensor-core pass for 16-bit types where it covers the shape, else
  // per-head cuBLAS products (Q P, then the masked triangle).
  bool fused = false;
  if constexpr (!std::is_same_v<T, float>) {
    const IntraBlockArgs<T> ib{T_, static_cast<int>(M), H, Hkv, dk, dv, C, Qf, Kf, v, v_tail ? v_tail : v, Pall,
                               p_stride, tab.diag.data(), o};
    fused = intra_block_usable(ib);
    if (fused) intra_block(ib, stream);
  }
  if (!fused) output_by_products(Qf, Kf, v, v_tail, Pall, p_stride, tab.diag.data(), T_, o);

  const FinalStateArgs<T> fs{lay, Sall, Pall, tsum.data(), sum_tiles, tail_tiles, recent, last, tail_end,
                             loose_blocks > 0 ? loose : nullptr, matrix(s, 0, 0), CausalState::kPrefix,
                             CausalState::kRunning, CausalState::kTail, CausalState::kFirstRecent};
  final_state(fs, stream);

  m.position = T_;
  m.folded = last;
  m.recent = recent;
  m.tail = tail_end;
  m.oldest = 0;
}

template <class T>
void GpuCausalOperator::Impl::output_by_products(const T* Qf, const T* Kf, const T* v, const T* v_tail, const T* Pall,
                                                 long long p_stride, const float* diag, long long T_, float* o) {
  const auto& L = opt.layout;
  const int H = L.heads, Hkv = L.kv_heads, G = L.group(), dk = L.dk, dv = L.dv, C = opt.block_size;
  const long long M = (T_ + C - 1) / C;
  const auto dt = dtype();
  scores.resize(static_cast<size_t>(M) * C * C * sizeof(T));
  T* Sc = reinterpret_cast<T*>(scores.data());
  const long long Mf = T_ / C, rem = T_ - Mf * C, r0 = Mf * C;
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    const T* Pg = Pall + g * p_stride;
    // o = Q P for every whole block, then the last block's rows.
    RowMajorGemm qp{false, false, C, dv, dk, Qf + h * dk, H * dk, static_cast<long long>(C) * H * dk, Pg, dv, me,
                    o + h * dv, H * dv, static_cast<long long>(C) * H * dv, static_cast<int>(Mf)};
    gemm(blas, qp, dt, CUDA_R_32F);
    if (rem > 0) {
      qp.m = static_cast<int>(rem);
      qp.a = Qf + r0 * H * dk + h * dk;
      qp.b = Pg + Mf * me;
      qp.c = o + r0 * H * dv + h * dv;
      qp.batch = 1;
      gemm(blas, qp, dt, CUDA_R_32F);
    }
    // Intra-block triangle: scores = Q K^T of every block (zero rows and columns past T), masked
    // and weighted, then o += scores V.
    const RowMajorGemm qk{false, true, C, C, dk, Qf + h * dk, H * dk, static_cast<long long>(C) * H * dk, Kf + g * dk,
                          Hkv * dk, static_cast<long long>(C) * Hkv * dk, Sc, C, static_cast<long long>(C) * C,
                          static_cast<int>(M)};
    gemm(blas, qk, dt, dt);
    mask_scale_triangle(Sc, static_cast<int>(M), C, diag, stream);
    RowMajorGemm sv{false, false, C, dv, C, Sc, C, static_cast<long long>(C) * C, v + g * dv, Hkv * dv,
                    static_cast<long long>(C) * Hkv * dv, o + h * dv, H * dv, static_cast<long long>(C) * H * dv,
                    static_cast<int>(Mf), 1.0f, 1.0f};
    gemm(blas, sv, dt, CUDA_R_32F);
    if (rem > 0) {
      sv.m = static_cast<int>(rem);
      sv.a = Sc + Mf * C * C;
      sv.b = v_tail + g * dv;
      sv.c = o + r0 * H * dv + h * dv;
      sv.batch = 1;
      gemm(blas, sv, dt, CUDA_R_32F);
    }
  }
}

template <class T>
void GpuCausalOperator::Impl::extend(int s, const T* q, const T* k, const T* v, long long n, float* o) {
  SlotMeta& m = slot(s);
  check_window(m.position, n);
  if (n <= 0) return;
  const auto& L = opt.layout;
  const int H = L.heads, Hkv = L.kv_heads, G = L.group(), dk = L.dk, dv = L.dv, C = opt.block_size;
  const auto dt = dtype();
  const size_t el = sizeof(T);
  qf.resize(n * H * dk * el);
  kf.resize(n * Hkv * dk * el);
  T* Qf = reinterpret_cast<T*>(qf.data());
  T* Kf = reinterpret_cast<T*>(kf.data());
  FeatureArgs fa{n, H, dk, opt.feature_map, opt.eps, opt.effective_scale(), opt.rotary, opt.rotary_base, m.position,
                 nullptr, theta.data()};
  features(q, Qf, fa, stream);
  fa.heads = Hkv;
  fa.scale = 1.0f;
  features(k, Kf, fa, stream);
  P.resize(Hkv * me * el);  // the mixed prefix P + w A of each kv head, in T
  T* mixed = reinterpret_cast<T*>(P.data());
  scores.resize(static_cast<size_t>(H) * C * C * el);
  T* Sc = reinterpret_cast<T*>(scores.data());

  // The plan, made on the host first: the pieces (the rest of the current block, then whole
  // blocks), the block each one closes first (as the decode step does) and its weight on the
  // running block; with the pointer tables of its per-head products it goes to the device in
  // one copy, so the pieces then run without waiting for the host.
  struct Piece {
    long long t0;
    int rows;
    float w;
    bool close;
  };
  std::vector<Piece> pieces;
  for (long long t0 = 0, pos = m.position; t0 < n;) {
    const long long take = std::min(n - t0, C - pos % C);
    pieces.push_back({t0, static_cast<int>(take), 0.0f, false});
    t0 += take, pos += take;
  }
  const StepLayout lay(1, capacity + 1);
  const size_t close_bytes = (lay.bytes + 15) / 16 * 16, ptr_count = 9 * static_cast<size_t>(H);
  const size_t piece_bytes = close_bytes + ptr_count * sizeof(void*);
  char* host = plan.host(pieces.size() * piece_bytes);
  for (size_t i = 0; i < pieces.size(); ++i) {
    Piece& pc = pieces[i];
    char* table = host + i * piece_bytes;
    int* ints = reinterpret_cast<int*>(table + lay.ints_at);
    pc.close = close_if_full(s, 0, 1, ints, reinterpret_cast<float*>(table + lay.floats_at) + 1);
    ints[0] = s;
    ints[1] = 1;
    pc.w = static_cast<float>(effective_weight(weights, opt.policy, m.folded, m.folded));
    // Per head h of group g: [Q_h, mixed_g, O_h], [Q_h, K_g, scores_h], [scores_h, V_g, O_h].
    const void** ptr = reinterpret_cast<const void**>(table + close_bytes);
    for (int h = 0; h < H; ++h) {
      const int g = h / G;
      const T* Qh = Qf + pc.t0 * H * dk + h * dk;
      float* Oh = o + pc.t0 * H * dv + h * dv;
      const T* Sh = Sc + static_cast<size_t>(h) * C * C;
      ptr[h] = Qh, ptr[H + h] = mixed + g * me, ptr[2 * H + h] = Oh;
      ptr[3 * H + h] = Qh, ptr[4 * H + h] = Kf + pc.t0 * Hkv * dk + g * dk, ptr[5 * H + h] = Sh;
      ptr[6 * H + h] = Sh, ptr[7 * H + h] = v + pc.t0 * Hkv * dv + g * dv, ptr[8 * H + h] = Oh;
    }
    m.position += pc.rows;
  }
  const char* dev = plan.send(pieces.size() * piece_bytes, stream);

  // Each piece: o = Q (P + w A) + w tril(Q K^T) V, then A += K^T V.
  for (size_t i = 0; i < pieces.size(); ++i) {
    const Piece& pc = pieces[i];
    const char* d = dev + i * piece_bytes;
    if (pc.close) {
      const int* d_int = reinterpret_cast<const int*>(d + lay.ints_at);
      const int* close = d_int + 2;
      close_blocks(CloseBlockArgs{1, d_int + 1, Hkv, me, pool.data(), slot_stride, capacity + 1, close, close + 1,
                                  close + 2, close + 3, reinterpret_cast<const float*>(d + lay.floats_at) + 1},
                   stream);
    }
    mixed_prefix(matrix(s, CausalState::kPrefix, 0), matrix(s, CausalState::kRunning, 0), pc.w, Hkv * me, mixed, stream);
    const void* const* ptr = reinterpret_cast<const void* const*>(d + close_bytes);
    const int rows = pc.rows;
    gemm_pointers(blas, RowMajorGemm{false, false, rows, dv, dk, nullptr, H * dk, 0, nullptr, dv, 0, nullptr, H * dv, 0, H},
                  ptr, dt, CUDA_R_32F);
    gemm_pointers(blas,
                  RowMajorGemm{false, true, rows, rows, dk, nullptr, H * dk, 0, nullptr, Hkv * dk, 0, nullptr, C, 0, H, pc.w},
                  ptr + 3 * H, dt, dt);
    mask_scale_triangle(Sc, H, C, unit.data(), stream);
    gemm_pointers(blas,
                  RowMajorGemm{false, false, rows, dv, rows, nullptr, C, 0, nullptr, Hkv * dv, 0, nullptr, H * dv, 0, H,
                               1.0f, 1.0f},
                  ptr + 6 * H, dt, CUDA_R_32F);
    gemm(blas,
         RowMajorGemm{true, false, dk, dv, rows, Kf + pc.t0 * Hkv * dk, Hkv * dk, dk, v + pc.t0 * Hkv * dv, Hkv * dv, dv,
                      matrix(s, CausalState::kRunning, 0), dv, me, Hkv, 1.0f, 1.0f},
         dt, CUDA_R_32F);
  }
}

bool GpuCausalOperator::Impl::close_if_full(int s, int index, int batch, int* ints, float* term_weights) {
  SlotMeta& m = meta[s];
  const int C = opt.block_size, terms = capacity + 1;
  if (m.position == 0 || m.position - m.folded * C != C) return false;
  int* close_slot = ints + batch + 1;
  int* push_to = close_slot + batch;
  int* fold = push_to + batch;
  int* ts = fold + batch + static_cast<size_t>(index) * terms;
  float* tw = term_weights + static_cast<size_t>(index) * terms;
  // Mirror of CausalState::close_block: weights first, then the ring moves.
  const bool full = m.recent == capacity;
  const auto row = block_row_weights(weights, opt.policy, m.folded + 1, m.tail + (full ? 1 : 0));
  close_slot[index] = s;
  if (capacity == 0) {
    fold[index] = -1;
    push_to[index] = -1;
    ++m.tail;
  } else if (!full) {
    fold[index] = -1;
    push_to[index] = CausalState::kFirstRecent + (m.oldest + m.recent) % capacity;
    ++m.recent;
  } else {
    fold[index] = CausalState::kFirstRecent + m.oldest;
    push_to[index] = CausalState::kFirstRecent + m.oldest;
    ++m.tail;
    m.oldest = (m.oldest + 1) % capacity;
  }
  ++m.folded;
  std::fill_n(ts, terms, -1);
  std::fill_n(tw, terms, 0.0f);
  int n = 0;
  if (m.tail > 0) ts[n] = CausalState::kTail, tw[n++] = row.tail;
  for (int r = 1; r <= static_cast<int>(row.by_distance.size()); ++r)
    ts[n] = CausalState::kFirstRecent + (m.oldest + m.recent - r) % capacity, tw[n++] = row.by_distance[r - 1];
  return true;
}

void GpuCausalOperator::Impl::decode_prepare(std::span<const int> slots) {
  const int B = static_cast<int>(slots.size());
  for (int i = 0; i < B; ++i) {
    check_window(slot(slots[i]).position, 1);
    for (int j = i + 1; j < B; ++j)
      if (slots[i] == slots[j]) throw Error(fmt::format("a decode step names slot {} twice", slots[i]));
  }
  const StepLayout lay(B, capacity + 1);
  char* h = step.host(lay.bytes);
  auto* pos = reinterpret_cast<long long*>(h);
  int* ints = reinterpret_cast<int*>(h + lay.ints_at);
  float* floats = reinterpret_cast<float*>(h + lay.floats_at);
  float* dg = floats;
  int nc = 0;
  for (int i = 0; i < B; ++i) {
    SlotMeta& m = meta[slots[i]];
    ints[i] = slots[i];
    if (close_if_full(slots[i], nc, B, ints, floats + B)) ++nc;
    dg[i] = static_cast<float>(effective_weight(weights, opt.policy, m.folded, m.folded));
    pos[i] = m.position;
  }
  ints[B] = nc;
  for (int i = 0; i < B; ++i) ++meta[slots[i]].position;
}

template <class T>
void GpuCausalOperator::Impl::decode_launch(int B, const T* q, const T* k, const T* v, float* o) {
  const int terms = capacity + 1;
  const StepLayout lay(B, terms);
  char* d = step.send(lay.bytes, stream);
  const auto* d_pos = reinterpret_cast<const long long*>(d);
  const int* d_int = reinterpret_cast<const int*>(d + lay.ints_at);
  const float* d_float = reinterpret_cast<const float*>(d + lay.floats_at);
  const auto& L = opt.layout;
  const int* close = d_int + B + 1;
  CloseBlockArgs ca{B, d_int + B, L.kv_heads, me, pool.data(), slot_stride, terms, close, close + B, close + 2 * B,
                    close + 3 * B, d_float + B};
  close_blocks(ca, stream);
  DecodeArgs da{B, L.heads, L.kv_heads, L.dk, L.dv, opt.feature_map, opt.eps, opt.effective_scale(), opt.rotary,
                opt.rotary_base, pool.data(), slot_stride, d_int, d_pos, d_float, theta.data(),
                splits(B), split_out.data()};
  decode_step(q, k, v, o, da, stream);
}

GpuCausalOperator::GpuCausalOperator(CausalOptions options, MixingWeights weights, int max_sequences,
                                     Precision precision, int prefill_tile_blocks)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(weights), max_sequences, precision,
                                   std::max(prefill_tile_blocks, 1))) {}
GpuCausalOperator::GpuCausalOperator(GpuCausalOperator&&) noexcept = default;
GpuCausalOperator& GpuCausalOperator::operator=(GpuCausalOperator&&) noexcept = default;
GpuCausalOperator::~GpuCausalOperator() = default;

const CausalOptions& GpuCausalOperator::options() const { return impl_->opt; }
Precision GpuCausalOperator::precision() const { return impl_->precision; }
size_t GpuCausalOperator::slot_bytes() const { return impl_->slot_stride * sizeof(float); }

int GpuCausalOperator::acquire() {
  for (size_t s = 0; s < impl_->meta.size(); ++s)
    if (!impl_->meta[s].used) {
      impl_->meta[s] = SlotMeta{};
      impl_->meta[s].used = true;
      const long long fresh = CausalState::kFirstRecent * impl_->opt.layout.kv_heads * impl_->me;
      MHLA_CUDA_CHECK(cudaMemsetAsync(impl_->matrix(static_cast<int>(s), 0, 0), 0, fresh * sizeof(float), impl_->stream));
      return static_cast<int>(s);
    }
  throw Error(fmt::format("all {} state slots are in use; release one or make a larger pool", impl_->meta.size()));
}

void GpuCausalOperator::release(int slot) { impl_->slot(slot).used = false; }

void GpuCausalOperator::copy_slot(int from, int to) {
  const SlotMeta m = impl_->slot(from);
  impl_->slot(to);
  if (from == to) return;
  MHLA_CUDA_CHECK(cudaMemcpyAsync(impl_->matrix(to, 0, 0), impl_->matrix(from, 0, 0), impl_->slot_stride * sizeof(float),
                                  cudaMemcpyDeviceToDevice, impl_->stream));
  impl_->meta[to] = m;
}

void GpuCausalOperator::set_batch_invariant(bool on) {
  auto& im = *impl_;
  im.batch_invariant = on;
  // Room for the partial outputs of a full pool at the split of a single sequence.
  if (on)
    im.split_out.resize(static_cast<size_t>(im.splits(1)) * im.meta.size() * im.opt.layout.heads *
                        im.opt.layout.dv);
}

void GpuCausalOperator::set_stream(void* stream) {
  impl_->stream = stream ? static_cast<cudaStream_t>(stream) : impl_->own_stream;
  MHLA_CUBLAS_CHECK(cublasSetStream(impl_->blas, impl_->stream));
}
long long GpuCausalOperator::position(int slot) const { return impl_->slot(slot).position; }

void GpuCausalOperator::upload(int slot, const CausalState& st) {
  auto& m = impl_->slot(slot);
  const auto& a = st.layout();
  const auto& b = impl_->opt.layout;
  if (a.heads != b.heads || a.kv_heads != b.kv_heads || a.dk != b.dk || a.dv != b.dv ||
      st.block_size() != impl_->opt.block_size || st.mixing_blocks() != impl_->weights.blocks() || st.normalized())
    throw Error("the state was made for a different operator configuration");
  const size_t bytes = impl_->me * sizeof(float);
  for (int g = 0; g < b.kv_heads; ++g) {
    for (int k : {CausalState::kPrefix, CausalState::kRunning, CausalState::kTail})
      MHLA_CUDA_CHECK(cudaMemcpyAsync(impl_->matrix(slot, k, g), st.matrix(k, g), bytes, cudaMemcpyHostToDevice, impl_->stream));
    for (int r = 1; r <= st.recent_count(); ++r)
      MHLA_CUDA_CHECK(cudaMemcpyAsync(impl_->matrix(slot, CausalState::kFirstRecent + st.recent_count() - r, g),
                                      st.matrix(st.recent_slot(r), g), bytes, cudaMemcpyHostToDevice, impl_->stream));
  }
  MHLA_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  m.position = st.position();
  m.folded = st.current_block();
  m.tail = st.tail_blocks();
  m.recent = st.recent_count();
  m.oldest = 0;
}

CausalState GpuCausalOperator::download(int slot) const {
  const auto& m = impl_->slot(slot);
  CausalState st(impl_->opt.layout, impl_->opt.block_size, impl_->weights.blocks(), false);
  st.reset_to(m.position, m.tail, m.recent);
  const size_t bytes = impl_->me * sizeof(float);
  for (int g = 0; g < impl_->opt.layout.kv_heads; ++g) {
    for (int k : {CausalState::kPrefix, CausalState::kRunning, CausalState::kTail})
      MHLA_CUDA_CHECK(cudaMemcpyAsync(st.matrix(k, g), impl_->matrix(slot, k, g), bytes, cudaMemcpyDeviceToHost, impl_->stream));
    for (int r = 1; r <= m.recent; ++r) {
      const int ring = impl_->capacity ? (m.oldest + m.recent - r) % impl_->capacity : 0;
      MHLA_CUDA_CHECK(cudaMemcpyAsync(st.matrix(st.recent_slot(r), g),
                                      impl_->matrix(slot, CausalState::kFirstRecent + ring, g), bytes,
                                      cudaMemcpyDeviceToHost, impl_->stream));
    }
  }
  MHLA_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  return st;
}

void GpuCausalOperator::prefill(int slot, const void* q, const void* k, const void* v, long long tokens, float* o) {
  with_storage_type(impl_->precision, [&]<class T>(std::type_identity<T>) {
    impl_->prefill(slot, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), tokens, o);
  });
}

void GpuCausalOperator::extend(int slot, const void* q, const void* k, const void* v, long long tokens, float* o) {
  with_storage_type(impl_->precision, [&]<class T>(std::type_identity<T>) {
    impl_->extend(slot, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), tokens, o);
  });
}

void GpuCausalOperator::decode(std::span<const int> slots, const void* q, const void* k, const void* v, float* o) {
  decode_prepare(slots);
  decode_launch(static_cast<int>(slots.size()), q, k, v, o);
}

void GpuCausalOperator::decode_prepare(std::span<const int> slots) { impl_->decode_prepare(slots); }

void GpuCausalOperator::decode_launch(int batch, const void* q, const void* k, const void* v, float* o) {
  with_storage_type(impl_->precision, [&]<class T>(std::type_identity<T>) {
    impl_->decode_launch(batch, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), o);
  });
}

void GpuCausalOperator::synchronize() const { MHLA_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

}  // namespace mhla::cuda
