// GpuNonCausalOperator: non-causal MHLA on the device (host side; the kernels are in
// elementwise.cu and noncausal.cu). Every step mirrors lib/cpu/noncausal.cpp.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cuda/buffer.hpp"
#include "cuda/check.hpp"
#include "cuda/gemm.hpp"
#include "cuda/host_cast.hpp"
#include "cuda/kernels.cuh"
#include "cuda/precision.hpp"
#include "cuda/rotary.hpp"
#include "mhla/cuda.hpp"

namespace mhla::cuda {

struct GpuNonCausalOperator::Impl {
  NonCausalOptions opt;
  Precision precision;
  cublasHandle_t blas = nullptr;
  cudaStream_t own_stream = nullptr;
  cudaStream_t stream = nullptr;  // own_stream, or the caller's
  DeviceBuffer<double> theta;     // rotary frequencies base^(-2j/dk), as the CPU computes them
  // Grid windows: order[r] is the token at row r of the block order (block b's tokens at rows
  // b*C .. b*C+C-1, in token order, as the CPU gathers them); inverse is its inverse.
  DeviceBuffer<long long> order, inverse;

  // The mixing matrix of the last call, kept on the device while the caller passes the same one.
  std::vector<float> mixing_host;
  DeviceBuffer<float> w32;  // for the normalizer's fp32 product
  DeviceBuffer<char> wt;    // in the storage type divided by mixing_scale, for P = W S
  DeviceBuffer<char> ones;  // C ones in the storage type: block key sums as a product
  // In a 16-bit type S and P are kept within the range of a single token's k v^T, which fp16's
  // 65504 holds where their sums need not (one block over a whole sequence, a mixing matrix
  // with large row sums): S_b is stored divided by the power of two at or above C, W by
  // mixing_scale, the power of two at or above its largest row sum of magnitudes, and O = Q P
  // takes both back as its alpha. Powers of two scale exactly, except for values pushed below
  // the type's normal range (fp16: 6.1e-5), which keep fewer bits.
  float mixing_scale = 1.0f;

  // Scratch, grown as needed: inputs in block order (grid only), features (qd/kd: the
  // denominator's un-rotated copies, with rotary and normalization), summaries, their mixture,
  // block key sums and their mixture, the output in block order (grid only).
  DeviceBuffer<char> gq, gk, gv, qf, kf, qd, kd, S, P;
  DeviceBuffer<float> Z, Zm, ob;
  // forward_host's device copies of the inputs (fp32, then converted) and of the output.
  DeviceBuffer<float> host_in, host_out;
  DeviceBuffer<char> host_in_t;

  Impl(NonCausalOptions o, Precision p) : opt(std::move(o)), precision(p) {
    opt.validate();
    if (device_count() == 0) throw Error("no CUDA device is available");
    theta = rotary_frequencies(opt.rotary_base, opt.layout.dk);
    if (opt.grid) {
      const long long T = static_cast<long long>(opt.grid->height) * opt.grid->width;
      const int C = opt.tokens_per_block();
      std::vector<long long> ord(T), inv(T), fill(opt.block_count(T), 0);
      for (long long t = 0; t < T; ++t) {
        const int b = opt.block_of(t);
        ord[static_cast<size_t>(b) * C + fill[b]] = t;
        inv[t] = static_cast<long long>(b) * C + fill[b]++;
      }
      order.resize(T);
      inverse.resize(T);
      MHLA_CUDA_CHECK(cudaMemcpy(order.data(), ord.data(), T * sizeof(long long), cudaMemcpyHostToDevice));
      MHLA_CUDA_CHECK(cudaMemcpy(inverse.data(), inv.data(), T * sizeof(long long), cudaMemcpyHostToDevice));
    }
    MHLA_CUBLAS_CHECK(cublasCreate(&blas));
    MHLA_CUDA_CHECK(cudaStreamCreateWithFlags(&own_stream, cudaStreamNonBlocking));
    stream = own_stream;
    MHLA_CUBLAS_CHECK(cublasSetStream(blas, stream));
  }
  ~Impl() {
    if (blas) cublasDestroy(blas);
    if (own_stream) cudaStreamDestroy(own_stream);
  }

  cudaDataType_t dtype() const { return cuda_type(precision); }

  template <class T>
  void upload_mixing(std::span<const float> mixing, int M);
  template <class T>
  void forward(std::span<const float> mixing, const T* q, const T* k, const T* v, long long tokens, float* o);
};

template <class T>
void GpuNonCausalOperator::Impl::upload_mixing(std::span<const float> mixing, int M) {
  if (mixing_host.size() == mixing.size() && std::equal(mixing.begin(), mixing.end(), mixing_host.begin())) return;
  // Copies on the stream, so work still queued with the previous matrix reads the old values;
  // from pageable memory a copy has taken its data when the call returns.
  const size_t n = mixing.size();
  mixing_host.clear();  // until both copies are made
  w32.resize(n);
  MHLA_CUDA_CHECK(cudaMemcpyAsync(w32.data(), mixing.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
  if constexpr (!std::is_same_v<T, float>) {
    double widest = 0;
    for (size_t i = 0; i < n; i += M) {
      double row = 0;
      for (int j = 0; j < M; ++j) row += std::fabs(mixing[i + j]);
      widest = std::max(widest, row);
    }
    mixing_scale = 1.0f;
    while (mixing_scale < widest) mixing_scale *= 2;
    std::vector<T> w(n);
    for (size_t i = 0; i < n; ++i) w[i] = host_cast<T>(mixing[i] / mixing_scale);
    wt.resize(n * sizeof(T));
    MHLA_CUDA_CHECK(cudaMemcpyAsync(wt.data(), w.data(), n * sizeof(T), cudaMemcpyHostToDevice, stream));
  }
  mixing_host.assign(mixing.begin(), mixing.end());
}

template <class T>
void GpuNonCausalOperator::Impl::forward(std::span<const float> mixing, const T* q, const T* k, const T* v,
                                         long long tokens, float* o) {
  const int M = opt.checked_call(mixing, tokens, q, k, v, o);
  upload_mixing<T>(mixing, M);
  const T* W = std::is_same_v<T, float> ? reinterpret_cast<const T*>(w32.data()) : reinterpret_cast<const T*>(wt.data());
  const auto& L = opt.layout;
  const int H = L.heads, Hkv = L.kv_heads, G = L.group(), dk = L.dk, dv = L.dv, C = opt.tokens_per_block();
  const long long me = static_cast<long long>(dk) * dv;
  const auto dt = dtype();
  const bool grid = opt.grid.has_value();

  // Grid windows: rows into block order first (1-D blocks already are), so every block is C
  // consecutive rows and the products below are strided batches over blocks.
  if (grid) {
    gq.resize(tokens * H * dk * sizeof(T));
    gk.resize(tokens * Hkv * dk * sizeof(T));
    gv.resize(tokens * Hkv * dv * sizeof(T));
    gather_rows(q, reinterpret_cast<T*>(gq.data()), order.data(), tokens, static_cast<long long>(H) * dk, stream);
    gather_rows(k, reinterpret_cast<T*>(gk.data()), order.data(), tokens, static_cast<long long>(Hkv) * dk, stream);
    gather_rows(v, reinterpret_cast<T*>(gv.data()), order.data(), tokens, static_cast<long long>(Hkv) * dv, stream);
    q = reinterpret_cast<const T*>(gq.data());
    k = reinterpret_cast<const T*>(gk.data());
    v = reinterpret_cast<const T*>(gv.data());
  }

  // Features; rotary positions are token indices in the given order (order[r] for a grid).
  qf.resize(tokens * H * dk * sizeof(T));
  kf.resize(tokens * Hkv * dk * sizeof(T));
  T* Qf = reinterpret_cast<T*>(qf.data());
  T* Kf = reinterpret_cast<T*>(kf.data());
  FeatureArgs fa{tokens, H, dk, opt.feature_map, opt.eps, opt.effective_scale(), opt.rotary, opt.rotary_base, 0,
                 grid ? order.data() : nullptr, theta.data()};
  features(q, Qf, fa, stream);
  FeatureArgs ka = fa;
  ka.heads = Hkv;
  ka.scale = 1.0f;
  features(k, Kf, ka, stream);
  // The denominator reads un-rotated features (scaled q, plain k), so it stays positive.
  const T* Qd = Qf;
  const T* Kd = Kf;
  if (opt.normalize && opt.rotary) {
    qd.resize(tokens * H * dk * sizeof(T));
    kd.resize(tokens * Hkv * dk * sizeof(T));
    fa.rotary = ka.rotary = false;
    features(q, reinterpret_cast<T*>(qd.data()), fa, stream);
    features(k, reinterpret_cast<T*>(kd.data()), ka, stream);
    Qd = reinterpret_cast<const T*>(qd.data());
    Kd = reinterpret_cast<const T*>(kd.data());
  }

  // S[g][b] = K_b^T V_b, then P[g] = W S[g] over all blocks at once: [M x M] x [M x dk*dv].
  float block_scale = 1.0f;
  if constexpr (!std::is_same_v<T, float>)
    while (block_scale < static_cast<float>(C)) block_scale *= 2;
  const long long per_head = static_cast<long long>(M) * me;
  S.resize(Hkv * per_head * sizeof(T));
  P.resize(Hkv * per_head * sizeof(T));
  T* Sall = reinterpret_cast<T*>(S.data());
  T* Pall = reinterpret_cast<T*>(P.data());
  for (int g = 0; g < Hkv; ++g) {
    const RowMajorGemm sg{true, false, dk, dv, C, Kf + g * dk, Hkv * dk, static_cast<long long>(C) * Hkv * dk,
                          v + g * dv, Hkv * dv, static_cast<long long>(C) * Hkv * dv, Sall + g * per_head, dv, me, M,
                          1.0f / block_scale};
    gemm(blas, sg, dt, dt);
  }
  const RowMajorGemm pg{false, false, M, static_cast<int>(me), M, W, M, 0, Sall, me, per_head,
                        Pall, me, per_head, Hkv};
  gemm(blas, pg, dt, dt);

  // O_b = Q_b P_b, one strided batch over blocks per query head (written in block order).
  float* out = o;
  if (grid) {
    ob.resize(static_cast<size_t>(tokens) * H * dv);
    out = ob.data();
  }
  for (int h = 0; h < H; ++h) {
    const RowMajorGemm qp{false, false, C, dv, dk, Qf + h * dk, H * dk, static_cast<long long>(C) * H * dk,
                          Pall + (h / G) * per_head, dv, me, out + h * dv, H * dv, static_cast<long long>(C) * H * dv,
                          M, mixing_scale * block_scale};
    gemm(blas, qp, dt, CUDA_R_32F);
  }

  // Normalized: z_b = sum of the block's key features (a ones-row product, fp32 out), mixed
  // by W in fp32, then every row divided by q_d . z_mix + eps.
  if (opt.normalize) {
    if (ones.size() < C * sizeof(T)) {
      const std::vector<T> one(C, host_cast<T>(1.0f));
      ones.resize(C * sizeof(T));
      MHLA_CUDA_CHECK(cudaMemcpyAsync(ones.data(), one.data(), C * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
    Z.resize(static_cast<size_t>(Hkv) * M * dk);
    Zm.resize(static_cast<size_t>(Hkv) * M * dk);
    const long long zh = static_cast<long long>(M) * dk;
    for (int g = 0; g < Hkv; ++g) {
      const RowMajorGemm zg{false, false, 1, dk, C, ones.data(), C, 0, Kd + g * dk, Hkv * dk,
                            static_cast<long long>(C) * Hkv * dk, Z.data() + g * zh, dk, dk, M};
      gemm(blas, zg, dt, CUDA_R_32F);
    }
    const RowMajorGemm zm{false, false, M, dk, M, w32.data(), M, 0, Z.data(), dk, zh, Zm.data(), dk, zh, Hkv};
    gemm(blas, zm, CUDA_R_32F, CUDA_R_32F);
    normalize_rows(out, Qd, Zm.data(), NormalizeArgs{tokens, H, Hkv, dk, dv, C, M, opt.eps}, stream);
  }

  if (grid) gather_rows(ob.data(), o, inverse.data(), tokens, static_cast<long long>(H) * dv, stream);
}

GpuNonCausalOperator::GpuNonCausalOperator(NonCausalOptions options, Precision precision)
    : impl_(std::make_unique<Impl>(std::move(options), precision)) {}
GpuNonCausalOperator::GpuNonCausalOperator(GpuNonCausalOperator&&) noexcept = default;
GpuNonCausalOperator& GpuNonCausalOperator::operator=(GpuNonCausalOperator&&) noexcept = default;
GpuNonCausalOperator::~GpuNonCausalOperator() = default;

const NonCausalOptions& GpuNonCausalOperator::options() const { return impl_->opt; }
Precision GpuNonCausalOperator::precision() const { return impl_->precision; }

void GpuNonCausalOperator::forward(std::span<const float> mixing, const void* q, const void* k, const void* v,
                                   long long tokens, float* o) {
  with_storage_type(impl_->precision, [&]<class T>(std::type_identity<T>) {
    impl_->forward(mixing, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), tokens, o);
  });
}

void GpuNonCausalOperator::forward_host(std::span<const float> mixing, const float* q, const float* k,
                                        const float* v, long long tokens, float* o) {
  Impl& m = *impl_;
  m.opt.checked_call(mixing, tokens, q, k, v, o);
  const auto& L = m.opt.layout;
  const long long nq = tokens * L.heads * L.dk, nk = tokens * L.kv_heads * L.dk, nv = tokens * L.kv_heads * L.dv,
                  n = nq + nk + nv, no = tokens * L.heads * L.dv;
  m.host_in.resize(n);
  m.host_out.resize(no);
  float* in = m.host_in.data();
  MHLA_CUDA_CHECK(cudaMemcpyAsync(in, q, nq * sizeof(float), cudaMemcpyHostToDevice, m.stream));
  MHLA_CUDA_CHECK(cudaMemcpyAsync(in + nq, k, nk * sizeof(float), cudaMemcpyHostToDevice, m.stream));
  MHLA_CUDA_CHECK(cudaMemcpyAsync(in + nq + nk, v, nv * sizeof(float), cudaMemcpyHostToDevice, m.stream));
  with_storage_type(m.precision, [&]<class T>(std::type_identity<T>) {
    if constexpr (std::is_same_v<T, float>) {
      m.forward(mixing, in, in + nq, in + nq + nk, tokens, m.host_out.data());
    } else {
      m.host_in_t.resize(n * sizeof(T));
      auto* t = reinterpret_cast<T*>(m.host_in_t.data());
      convert(in, t, n, m.stream);
      m.forward(mixing, t, t + nq, t + nq + nk, tokens, m.host_out.data());
    }
  });
  MHLA_CUDA_CHECK(cudaMemcpyAsync(o, m.host_out.data(), no * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
  MHLA_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

void GpuNonCausalOperator::set_stream(void* stream) {
  impl_->stream = stream ? static_cast<cudaStream_t>(stream) : impl_->own_stream;
  MHLA_CUBLAS_CHECK(cublasSetStream(impl_->blas, impl_->stream));
}

void GpuNonCausalOperator::synchronize() const { MHLA_CUDA_CHECK(cudaStreamSynchronize(impl_->stream)); }

}  // namespace mhla::cuda
