// The forward pass: layer by layer over a group of sequences. Every matrix product is made per
// sequence, so a sequence's numbers never depend on what else is in the batch.
#include <algorithm>
#include <fmt/format.h>
#include <set>

#include "mhla/error.hpp"
#include "model/kernels.hpp"
#include "model/model_impl.hpp"

namespace mhla {

namespace {

// One sequence's rows in a group, with its activations.
struct Rows {
  ModelState* state = nullptr;
  std::span<const int> tokens;
  bool want_logits = false;
  bool all_rows = false;
  float* logits = nullptr;  // where this group's first logits row goes
  std::vector<float> x, h, proj, q, k, v, o, gu, act;
};

void run_group(const Model::Impl& m, std::vector<Rows>& group) {
  const auto& c = m.config;
  const auto hl = c.layout();
  const size_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const size_t qw = static_cast<size_t>(hl.heads) * hl.dk, kw = static_cast<size_t>(hl.kv_heads) * hl.dk,
               vw = static_cast<size_t>(hl.kv_heads) * hl.dv, ow = static_cast<size_t>(hl.heads) * hl.dv;
  const size_t pw = static_cast<size_t>(m.qkvg_rows());

  for (auto& r : group) {
    const size_t n = r.tokens.size();
    r.x.resize(n * D);
    for (size_t t = 0; t < n; ++t)
      std::copy_n(m.embeddings.data() + static_cast<size_t>(r.tokens[t]) * D, D, r.x.data() + t * D);
    r.h.resize(n * D);
    r.proj.resize(n * pw);
    r.q.resize(n * qw);
    r.k.resize(n * kw);
    r.v.resize(n * vw);
    r.o.resize(n * ow);
    r.gu.resize(n * 2 * I);
    r.act.resize(n * I);
  }

  for (const auto& w : m.layers) {
    for (auto& r : group) {
      const size_t n = r.tokens.size();
      detail::rms_norm(r.x.data(), w.attn_norm.data(), n, D, c.norm_eps, r.h.data());
      detail::linear(r.h.data(), n, D, w.qkvg.data(), pw, r.proj.data());
      for (size_t t = 0; t < n; ++t) {
        const float* p = r.proj.data() + t * pw;
        std::copy_n(p, qw, r.q.data() + t * qw);
        std::copy_n(p + qw, kw, r.k.data() + t * kw);
        std::copy_n(p + qw + kw, vw, r.v.data() + t * vw);
      }
    }
    for (size_t policy = 0; policy < w.ops.size(); ++policy) {
      std::vector<CausalSequence> seqs;
      for (auto& r : group)
        if (static_cast<size_t>(r.state->policy) == policy) {
          CausalState& s = r.state->layers[&w - m.layers.data()];
          seqs.push_back({&s, r.q.data(), r.k.data(), r.v.data(), r.o.data(), static_cast<long long>(r.tokens.size())});
        }
      if (!seqs.empty()) w.ops[policy].forward_batch(seqs);
    }
    for (auto& r : group) {
      const size_t n = r.tokens.size();
      const float* g = c.use_output_gate ? r.proj.data() + qw + kw + vw : nullptr;
      detail::gated_head_norm(r.o.data(), g, pw, w.gate_norm.data(), n, hl.heads, hl.dv, c.norm_eps);
      detail::linear(r.o.data(), n, ow, w.o_proj.data(), D, r.x.data(), true);
      detail::rms_norm(r.x.data(), w.mlp_norm.data(), n, D, c.norm_eps, r.h.data());
      detail::linear(r.h.data(), n, D, w.gate_up.data(), 2 * I, r.gu.data());
      detail::swiglu(r.gu.data(), n, I, r.act.data());
      detail::linear(r.act.data(), n, I, w.down.data(), D, r.x.data(), true);
    }
  }

  for (auto& r : group) {
    if (!r.want_logits) continue;
    const size_t n = r.tokens.size();
    const size_t rows = r.all_rows ? n : 1;
    const float* from = r.x.data() + (n - rows) * D;
    detail::rms_norm(from, m.final_norm.data(), rows, D, c.norm_eps, r.h.data());
    detail::linear(r.h.data(), rows, D, m.head(), V, r.logits);
  }
}

}  // namespace

void Model::forward(std::span<const SequenceStep> batch, long long chunk) const {
  const auto& m = *impl_;
  const int V = m.config.vocab_size;
  if (chunk <= 0) throw Error(fmt::format("prefill chunk must be positive, got {}", chunk));
  std::set<const ModelState*> seen;
  for (const auto& s : batch) {
    if (!s.state) throw Error("every sequence of a forward call needs a state");
    if (!seen.insert(s.state).second) throw Error("a forward call names the same state twice");
    if (s.state->layers.size() != m.layers.size())
      throw Error(fmt::format("the state has {} layers but the model has {}", s.state->layers.size(), m.layers.size()));
    const auto policy = static_cast<size_t>(s.state->policy);
    if (policy >= m.layers.front().ops.size())
      throw Error(fmt::format("the {} policy needs a mixing matrix of at least 2 blocks; this model has {}",
                              to_string(s.state->policy), m.mixing_blocks));
    if (s.logits != LogitsMode::none && !s.logits_out) throw Error("logits were asked for without an output vector");
    if (s.logits != LogitsMode::none && s.tokens.empty()) throw Error("logits were asked for with no tokens");
    for (size_t i = 0; i < s.tokens.size(); ++i)
      if (s.tokens[i] < 0 || s.tokens[i] >= V)
        throw Error(fmt::format("token id {} (at index {}) is outside the vocabulary of {} tokens", s.tokens[i], i, V));
    m.layers.front().ops[policy].check_admissible(s.state->layers.front(), static_cast<long long>(s.tokens.size()));
  }

  std::vector<Rows> singles;
  for (const auto& s : batch) {
    if (s.logits != LogitsMode::none)
      s.logits_out->assign((s.logits == LogitsMode::all ? s.tokens.size() : 1) * static_cast<size_t>(V), 0.0f);
    if (s.tokens.size() != 1) continue;
    Rows r;
    r.state = s.state;
    r.tokens = s.tokens;
    r.want_logits = s.logits != LogitsMode::none;
    r.logits = r.want_logits ? s.logits_out->data() : nullptr;
    singles.push_back(std::move(r));
  }
  if (!singles.empty()) run_group(m, singles);

  for (const auto& s : batch) {
    const long long n = static_cast<long long>(s.tokens.size());
    if (n <= 1) continue;
    for (long long c0 = 0; c0 < n; c0 += chunk) {
      const long long len = std::min(chunk, n - c0);
      std::vector<Rows> one(1);
      one[0].state = s.state;
      one[0].tokens = s.tokens.subspan(static_cast<size_t>(c0), static_cast<size_t>(len));
      one[0].all_rows = s.logits == LogitsMode::all;
      one[0].want_logits = one[0].all_rows || (s.logits == LogitsMode::last && c0 + len == n);
      if (one[0].want_logits) one[0].logits = s.logits_out->data() + (one[0].all_rows ? c0 * V : 0);
      run_group(m, one);
    }
  }
}

}  // namespace mhla
