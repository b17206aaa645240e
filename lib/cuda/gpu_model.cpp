// The model's forward pass on the GPU: the CPU's layer stack (lib/model/model_forward.cpp)
// with cuBLAS products and the row kernels of model_kernels.cu. The residual stream is fp32;
// the products read weights and activations in the model's precision with fp32 accumulation.
#include "cuda/gpu_model.hpp"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <map>
#include <optional>
#include <set>
#include <type_traits>
#include <utility>

#include "cuda/buffer.hpp"
#include "cuda/check.hpp"
#include "cuda/gemm.hpp"
#include "cuda/host_cast.hpp"
#include "cuda/model_kernels.cuh"
#include "cuda/pinned.hpp"
#include "cuda/precision.hpp"
#include "cuda/row_sampler.hpp"
#include "cuda/small_batch.cuh"
#include "mhla/cuda.hpp"
#include "mhla/error.hpp"
#include "model/model_impl.hpp"

namespace mhla::cuda {

namespace {

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
  DeviceBuffer<T> d(host.size());
  if (!host.empty()) MHLA_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Refuses weights past T's range (fp16's 65504), which would turn into infinities.
template <class T>
DeviceBuffer<T> weights_to_device(const std::vector<float>& w) {
  std::vector<T> host(w.size());
  std::transform(w.begin(), w.end(), host.begin(), host_cast<T>);
  for (size_t i = 0; i < w.size(); ++i)
    if (std::isinf(host_float(host[i])) && std::isfinite(w[i]))
      throw Error(fmt::format("a weight of {} is outside the range of the device precision (f16 holds up to 65504): "
                              "use bf16 or f32",
                              w[i]));
  return to_device(host);
}

// An instantiated graph of the decode pass for one batch size.
class Graph {
public:
  explicit Graph(cudaGraph_t graph) { MHLA_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph, 0)); }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    if (exec_) cudaGraphExecDestroy(exec_);
  }
  void launch(cudaStream_t s) const { MHLA_CUDA_CHECK(cudaGraphLaunch(exec_, s)); }

private:
  cudaGraphExec_t exec_ = nullptr;
};

// The cuBLAS handle and the stream every launch of a model goes to, released last.
struct Handles {
  cublasHandle_t blas = nullptr;
  cudaStream_t stream = nullptr;
  Handles() {
    MHLA_CUBLAS_CHECK(cublasCreate(&blas));
    try {
      MHLA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      MHLA_CUBLAS_CHECK(cublasSetStream(blas, stream));
    } catch (...) {
      cublasDestroy(blas);
      throw;
    }
  }
  Handles(const Handles&) = delete;
  Handles& operator=(const Handles&) = delete;
  ~Handles() {
    cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }
};

// cuBLAS's own workspace for the products, fixed so that graph capture allocates nothing.
constexpr size_t kBlasWorkspace = size_t{32} << 20;
// All-logits requests are computed this many rows at a time, to bound the device buffer.
constexpr long long kLogitRows = 512;

template <class T>
class GpuModel final : public DeviceModel {
public:
  // `p`: the operators' precision, the model's in mhla::cuda's terms.
  GpuModel(const Model& model, const DeviceModelOptions& options, Precision p)
      : model_(model), m_(model.internals()), opt_(options), type_(cuda_type(p)) {
    const auto& c = m_.config;
    const auto hl = c.layout();
    D_ = c.hidden_size;
    I_ = c.intermediate_size;
    V_ = c.vocab_size;
    qw_ = hl.heads * hl.dk;
    kw_ = hl.kv_heads * hl.dk;
    vw_ = hl.kv_heads * hl.dv;
    ow_ = hl.heads * hl.dv;
    pw_ = m_.qkvg_rows();
    if (opt_.max_sequences <= 0) throw Error("a device model needs at least one state slot");
    const auto policy = static_cast<size_t>(opt_.policy);
    if (policy >= m_.layers.front().ops.size())
      throw Error(fmt::format("the {} policy needs a mixing matrix of at least 2 blocks; this model has {}",
                              to_string(opt_.policy), m_.mixing_blocks));
    blas_workspace_.resize(kBlasWorkspace);
    MHLA_CUBLAS_CHECK(cublasSetWorkspace(blas_, blas_workspace_.data(), kBlasWorkspace));
    for (const auto& w : m_.layers) {
      const CausalOperator& cpu = w.ops[policy];
      Layer l{to_device(w.attn_norm), to_device(w.gate_norm), to_device(w.mlp_norm), weights_to_device<T>(w.qkvg),
              weights_to_device<T>(w.o_proj), weights_to_device<T>(w.gate_up), weights_to_device<T>(w.down),
              GpuCausalOperator(cpu.options(), cpu.weights(), opt_.max_sequences, p)};
      l.op.set_stream(stream_);
      l.op.set_batch_invariant(opt_.batch_invariant);
      layers_.push_back(std::move(l));
    }
    embeddings_ = weights_to_device<T>(m_.embeddings);
    if (!m_.lm_head.empty()) lm_head_ = weights_to_device<T>(m_.lm_head);
    final_norm_ = to_device(m_.final_norm);
    if (opt_.batch_invariant && !few_rows(1))
      throw Error(fmt::format("batch-invariant decoding needs the matrix-vector kernels, which do not cover this "
                              "model's widths (hidden {}, heads x dv {}, intermediate {}) in {}",
                              D_, ow_, I_, to_string(opt_.precision)));
    reserve(dec_, opt_.max_sequences);
    dec_.logits.resize(static_cast<size_t>(opt_.max_sequences) * V_);
    host_logits_ = std::make_unique<PinnedArray<float>>(static_cast<size_t>(opt_.max_sequences) * V_);
    sampler_.emplace(V_, opt_.max_sequences);
    name_ = fmt::format("{} ({}{}{})", device_name(0), to_string(opt_.precision), opt_.cuda_graphs ? ", CUDA graphs" : "",
                        opt_.batch_invariant ? ", batch-invariant" : "");
  }

  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  ~GpuModel() override = default;

  std::string description() const override { return name_; }
  const Model& model() const override { return model_; }
  ContextPolicy policy() const override { return opt_.policy; }
  DevicePrecision precision() const override { return opt_.precision; }
  size_t slot_bytes() const override { return layers_.size() * layers_.front().op.slot_bytes(); }

  int acquire() override {
    const int s = layers_.front().op.acquire();
    for (size_t l = 1; l < layers_.size(); ++l)
      if (layers_[l].op.acquire() != s) throw Error("the layers' state slots went out of step");
    return s;
  }
  void release(int slot) override {
    for (auto& l : layers_) l.op.release(slot);
  }
  long long position(int slot) const override { return layers_.front().op.position(slot); }
  void copy(int from, int to) override {
    for (auto& l : layers_) l.op.copy_slot(from, to);
  }

  ModelState download(int slot) const override {
    ModelState st;
    st.policy = opt_.policy;
    for (const auto& l : layers_) st.layers.push_back(l.op.download(slot));
    return st;
  }
  void upload(int slot, const ModelState& state) override {
    if (state.layers.size() != layers_.size())
      throw Error(fmt::format("the state has {} layers but the model has {}", state.layers.size(), layers_.size()));
    if (state.policy != opt_.policy)
      throw Error(fmt::format("the state runs the {} policy but the device model runs {}", to_string(state.policy),
                              to_string(opt_.policy)));
    for (size_t l = 0; l < layers_.size(); ++l) layers_[l].op.upload(slot, state.layers[l]);
  }

  void forward(std::span<const DeviceStep> batch) override {
    check(batch);
    std::vector<const DeviceStep*> singles;
    std::vector<int> rows(batch.size());  // where each step's last logits will be
    for (size_t i = 0; i < batch.size(); ++i) {
      const DeviceStep& s = batch[i];
      // Every element is written below; resize keeps a vector's memory from step to step.
      if (s.logits != LogitsMode::none)
        s.logits_out->resize((s.logits == LogitsMode::all ? s.tokens.size() : 1) * static_cast<size_t>(V_));
      if (s.tokens.size() == 1) {
        rows[i] = static_cast<int>(singles.size());
        singles.push_back(&s);
      } else {
        const long long n = head_rows(s);
        rows[i] = static_cast<int>((n - 1) % std::min(n, kLogitRows));  // in the last piece of the head
      }
    }
    sampler_->begin(batch, rows, stream_);
    try {
      if (!singles.empty()) decode(singles);
      for (const auto& s : batch)
        if (s.tokens.size() > 1) prefill(s);
      sampler_->finish(stream_);
    } catch (...) {
      sampler_->abort();
      throw;
    }
  }

private:
  // Activations of a number of rows. Decode has its own set, allocated once for the whole
  // pool, so the addresses a captured graph holds never change.
  struct Scratch {
    DeviceBuffer<int> tokens;
    DeviceBuffer<float> x, o, logits;
    DeviceBuffer<T> h, proj, q, k, v, on, gu, act;
  };

  struct Layer {
    DeviceBuffer<float> attn_norm, gate_norm, mlp_norm;
    DeviceBuffer<T> qkvg, o_proj, gate_up, down;
    GpuCausalOperator op;
  };

  void check(std::span<const DeviceStep> batch) const {
    std::set<int> seen;
    const long long window = model_.trained_window();
    for (const auto& s : batch) {
      const long long pos = position(s.slot);  // throws for a slot not in use
      if (!seen.insert(s.slot).second) throw Error(fmt::format("a forward call names state slot {} twice", s.slot));
      if (s.logits != LogitsMode::none && !s.logits_out) throw Error("logits were asked for without an output vector");
      if (s.logits != LogitsMode::none && s.tokens.empty()) throw Error("logits were asked for with no tokens");
      if (s.sampling && !s.sampling->sampler) throw Error("sampling on the device was asked for without a sampler");
      if (s.sampling && s.tokens.empty()) throw Error("sampling on the device was asked for with no tokens");
      for (size_t i = 0; i < s.tokens.size(); ++i)
        if (s.tokens[i] < 0 || s.tokens[i] >= V_)
          throw Error(fmt::format("token id {} (at index {}) is outside the vocabulary of {} tokens", s.tokens[i], i, V_));
      const long long n = static_cast<long long>(s.tokens.size());
      if (opt_.policy == ContextPolicy::strict && pos + n > window)
        throw RefusedError(fmt::format("token position {} is past the trained window of {} tokens; under the strict "
                                       "policy nothing past the window is computed: use slide or slide_mean",
                                       std::max(pos, window), window));
    }
  }

  void reserve(Scratch& s, long long n) const {
    const auto r = static_cast<size_t>(n);
    s.tokens.resize(r);
    s.x.resize(r * D_);
    s.o.resize(r * ow_);
    s.h.resize(r * D_);
    s.proj.resize(r * pw_);
    s.q.resize(r * qw_);
    s.k.resize(r * kw_);
    s.v.resize(r * vw_);
    s.on.resize(r * ow_);
    s.gu.resize(r * 2 * I_);
    s.act.resize(r * I_);
  }

  // C[n][out] (+)= A[n][in] W[out][in]^T.
  void linear(const T* a, long long n, int in, const T* w, int out, void* c, cudaDataType_t c_type, bool accumulate) {
    const RowMajorGemm g{false, true, static_cast<int>(n), out, in, a, in, 0, w, in, 0, c, out, 0, 1, 1.0f,
                         accumulate ? 1.0f : 0.0f};
    gemm(blas_, g, type_, c_type);
  }

  // The layer stack over n rows whose tokens are in s.tokens (one token of each of n sequences
  // when `decoding`); `attend` runs the operator, reading s.q, s.k, s.v and writing s.o. A few
  // rows (decode of a small batch), or every decode step when batch-invariant, take the fused
  // matrix-vector kernels; more take cuBLAS products and the row kernels.
  template <class Attend>
  void layers_forward(Scratch& s, long long n, bool decoding, Attend&& attend) {
    const auto& c = m_.config;
    const auto hl = c.layout();
    const bool small = gemv_path(n, decoding);
    embed_rows(s.tokens.data(), embeddings_.data(), n, D_, s.x.data(), stream_);
    for (auto& l : layers_) {
      const T* g = nullptr;
      long long g_stride = 0;
      if (small) {
        SmallBatchArgs<T> qkvg = gemv_args(l.qkvg.data(), pw_, D_, n);
        qkvg.x = s.x.data();
        qkvg.norm_weight = l.attn_norm.data();
        qkvg.epilogue = SmallBatchEpilogue::split;
        qkvg.n0 = qw_, qkvg.n1 = qw_ + kw_, qkvg.n2 = qw_ + kw_ + vw_;
        qkvg.out0 = s.q.data(), qkvg.out1 = s.k.data(), qkvg.out2 = s.v.data();
        qkvg.out3 = c.use_output_gate ? s.proj.data() : nullptr;  // the gate, dense [n][H*dv]
        gemv(qkvg, n);
        if (c.use_output_gate) g = s.proj.data(), g_stride = ow_;
      } else {
        rms_norm_rows(s.x.data(), D_, l.attn_norm.data(), n, D_, c.norm_eps, s.h.data(), stream_);
        linear(s.h.data(), n, D_, l.qkvg.data(), pw_, s.proj.data(), type_, false);
        split_qkv(s.proj.data(), n, pw_, qw_, kw_, vw_, s.q.data(), s.k.data(), s.v.data(), stream_);
        if (c.use_output_gate) g = s.proj.data() + qw_ + kw_ + vw_, g_stride = pw_;
      }
      attend(l.op);
      gated_head_norm(s.o.data(), g, g_stride, l.gate_norm.data(), n, hl.heads, hl.dv, c.norm_eps, s.on.data(), stream_);
      if (small) {
        SmallBatchArgs<T> out = gemv_args(l.o_proj.data(), D_, ow_, n);
        out.in = s.on.data();
        out.epilogue = SmallBatchEpilogue::add_f32;
        out.out_f32 = s.x.data();
        gemv(out, n);
        SmallBatchArgs<T> up = gemv_args(l.gate_up.data(), 2 * I_, D_, n);
        up.x = s.x.data();
        up.norm_weight = l.mlp_norm.data();
        up.epilogue = SmallBatchEpilogue::swiglu;
        up.out_t = s.act.data();
        gemv(up, n);
        SmallBatchArgs<T> down = gemv_args(l.down.data(), D_, I_, n);
        down.in = s.act.data();
        down.epilogue = SmallBatchEpilogue::add_f32;
        down.out_f32 = s.x.data();
        gemv(down, n);
        continue;
      }
      linear(s.on.data(), n, ow_, l.o_proj.data(), D_, s.x.data(), CUDA_R_32F, true);
      rms_norm_rows(s.x.data(), D_, l.mlp_norm.data(), n, D_, c.norm_eps, s.h.data(), stream_);
      linear(s.h.data(), n, D_, l.gate_up.data(), 2 * I_, s.gu.data(), type_, false);
      swiglu_rows(s.gu.data(), n, I_, s.act.data(), stream_);
      linear(s.act.data(), n, I_, l.down.data(), D_, s.x.data(), CUDA_R_32F, true);
    }
  }

  bool gemv_path(long long n, bool decoding) const { return (decoding && opt_.batch_invariant) || few_rows(n); }
  // The fused matrix-vector path: a few rows, every inner size it meets supported.
  bool few_rows(long long n) const {
    return n <= kSmallBatchMax && small_batch_supported<T>(static_cast<int>(n), D_) &&
           small_batch_supported<T>(static_cast<int>(n), ow_) && small_batch_supported<T>(static_cast<int>(n), I_);
  }
  SmallBatchArgs<T> gemv_args(const T* w, int out, int in, long long n) const {
    SmallBatchArgs<T> a;
    a.batch = static_cast<int>(n);
    a.n = out;
    a.k = in;
    a.w = w;
    a.eps = m_.config.norm_eps;
    return a;
  }

  // The matrix-vector kernels over n rows, in groups of up to kSmallBatchMax rows (each row's
  // sums do not depend on the other rows of its group).
  void gemv(const SmallBatchArgs<T>& a, long long n) {
    for (long long r0 = 0; r0 < n; r0 += kSmallBatchMax) {
      SmallBatchArgs<T> g = a;
      g.batch = static_cast<int>(std::min<long long>(kSmallBatchMax, n - r0));
      if (g.x) g.x += r0 * a.k;
      if (g.in) g.in += r0 * a.k;
      if (g.out_t) g.out_t += r0 * (a.epilogue == SmallBatchEpilogue::swiglu ? a.n / 2 : a.n);
      if (g.out_f32) g.out_f32 += r0 * a.n;
      if (g.out0) g.out0 += r0 * a.n0;
      if (g.out1) g.out1 += r0 * (a.n1 - a.n0);
      if (g.out2) g.out2 += r0 * (a.n2 - a.n1);
      if (g.out3) g.out3 += r0 * (a.n - a.n2);
      small_batch_gemv(g, stream_);
    }
  }

  // Logits of `rows` rows of s.x from row `first`, into s.logits on the device.
  void head(Scratch& s, long long first, long long rows, bool decoding) {
    const T* w = lm_head_.size() ? lm_head_.data() : embeddings_.data();
    if (first == 0 && gemv_path(rows, decoding)) {
      SmallBatchArgs<T> h = gemv_args(w, V_, D_, rows);
      h.x = s.x.data();
      h.norm_weight = final_norm_.data();
      h.epilogue = SmallBatchEpilogue::store_f32;
      h.out_f32 = s.logits.data();
      gemv(h, rows);
      return;
    }
    rms_norm_rows(s.x.data() + first * D_, D_, final_norm_.data(), rows, D_, m_.config.norm_eps, s.h.data(), stream_);
    linear(s.h.data(), rows, D_, w, V_, s.logits.data(), CUDA_R_32F, false);
  }

  // One token for each sequence, in one batched pass. With graphs the pass (every kernel and
  // product of every layer, and the head) is captured once per batch size and replayed after
  // the operators' host-side step preparation.
  void decode(const std::vector<const DeviceStep*>& seqs) {
    const int B = static_cast<int>(seqs.size());
    std::vector<int> ids(B), slots(B);
    for (int i = 0; i < B; ++i) ids[i] = seqs[i]->tokens[0], slots[i] = seqs[i]->slot;
    Scratch& s = dec_;
    MHLA_CUDA_CHECK(cudaMemcpyAsync(s.tokens.data(), ids.data(), B * sizeof(int), cudaMemcpyHostToDevice, stream_));
    auto pass = [&] {
      layers_forward(s, B, true, [&](GpuCausalOperator& op) {
        op.decode_launch(B, s.q.data(), s.k.data(), s.v.data(), s.o.data());
      });
      head(s, 0, B, true);
    };
    for (auto& l : layers_) l.op.decode_prepare(slots);
    if (!opt_.cuda_graphs) {
      pass();
    } else if (const auto it = graphs_.find(B); it != graphs_.end()) {
      it->second->launch(stream_);
    } else {
      MHLA_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      cudaGraph_t graph = nullptr;
      try {
        pass();
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      MHLA_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      std::unique_ptr<Graph> made;
      try {
        made = std::make_unique<Graph>(graph);
      } catch (...) {
        cudaGraphDestroy(graph);
        throw;
      }
      cudaGraphDestroy(graph);
      graphs_.emplace(B, std::move(made)).first->second->launch(stream_);
    }
    bool any = false;
    for (const auto* q : seqs) any = any || q->logits != LogitsMode::none;
    if (any)
      MHLA_CUDA_CHECK(cudaMemcpyAsync(host_logits_->data(), s.logits.data(), static_cast<size_t>(B) * V_ * sizeof(float),
                                      cudaMemcpyDeviceToHost, stream_));
    sampler_->launch_decode(s.logits.data(), stream_);  // after the copy: it penalizes in place
    MHLA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (int i = 0; i < B; ++i)
      if (seqs[i]->logits != LogitsMode::none)
        std::copy_n(host_logits_->data() + static_cast<size_t>(i) * V_, V_, seqs[i]->logits_out->data());
  }

  // The rows of a prefill's head: every token's for all logits, else the last one's.
  static long long head_rows(const DeviceStep& st) {
    return st.logits == LogitsMode::all ? static_cast<long long>(st.tokens.size()) : 1;
  }

  // Many tokens of one sequence: the whole-sequence prefill from a fresh slot; from a later
  // position the operator continues block by block.
  void prefill(const DeviceStep& st) {
    const long long n = static_cast<long long>(st.tokens.size());
    Scratch& s = pre_;
    reserve(s, n);
    MHLA_CUDA_CHECK(cudaMemcpyAsync(s.tokens.data(), st.tokens.data(), n * sizeof(int), cudaMemcpyHostToDevice, stream_));
    const bool fresh = position(st.slot) == 0;
    const int slot = st.slot;
    layers_forward(s, n, false, [&](GpuCausalOperator& op) {
      if (fresh) return op.prefill(slot, s.q.data(), s.k.data(), s.v.data(), n, s.o.data());
      op.extend(slot, s.q.data(), s.k.data(), s.v.data(), n, s.o.data());
    });
    if (st.logits != LogitsMode::none || st.sampling) {
      const long long rows = head_rows(st), step = std::min(rows, kLogitRows);
      s.logits.resize(static_cast<size_t>(step) * V_);
      for (long long r0 = 0; r0 < rows; r0 += step) {
        const long long m = std::min(step, rows - r0);
        head(s, n - rows + r0, m, false);
        if (st.logits != LogitsMode::none)
          MHLA_CUDA_CHECK(cudaMemcpyAsync(st.logits_out->data() + r0 * V_, s.logits.data(),
                                          static_cast<size_t>(m) * V_ * sizeof(float), cudaMemcpyDeviceToHost,
                                          stream_));
      }
      sampler_->launch(st, s.logits.data(), stream_);
    }
    MHLA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  Handles handles_;  // declared first: destroyed after everything that uses them
  cublasHandle_t blas_ = handles_.blas;
  cudaStream_t stream_ = handles_.stream;
  const Model& model_;
  const Model::Impl& m_;
  DeviceModelOptions opt_;
  cudaDataType_t type_;
  std::string name_;
  int D_ = 0, I_ = 0, V_ = 0, qw_ = 0, kw_ = 0, vw_ = 0, ow_ = 0, pw_ = 0;
  DeviceBuffer<char> blas_workspace_;
  std::vector<Layer> layers_;
  DeviceBuffer<T> embeddings_, lm_head_;
  DeviceBuffer<float> final_norm_;
  Scratch dec_, pre_;
  std::unique_ptr<PinnedArray<float>> host_logits_;
  std::optional<RowSampler> sampler_;
  std::map<int, std::unique_ptr<Graph>> graphs_;
};

}  // namespace

std::unique_ptr<DeviceModel> make_gpu_model(const Model& model, const DeviceModelOptions& options) {
  if (model.internals().layers.empty()) throw Error("the model has no layers");
  Precision p = Precision::f32;
  switch (options.precision) {
    case DevicePrecision::f32: p = Precision::f32; break;
    case DevicePrecision::bf16: p = Precision::bf16; break;
    case DevicePrecision::f16: p = Precision::f16; break;
  }
  return with_storage_type(p, [&]<class T>(std::type_identity<T>) -> std::unique_ptr<DeviceModel> {
    return std::make_unique<GpuModel<T>>(model, options, p);
  });
}

}  // namespace mhla::cuda
