#include <algorithm>
#include <exception>
#include <fmt/format.h>

#include "core/features.hpp"
#include "cpu/causal_kernels.hpp"
#include "mhla/causal.hpp"
#include "mhla/error.hpp"

namespace mhla {

namespace {

detail::FeatureSpec feature_spec(const CausalOptions& o) {
  return {o.layout, o.feature_map, o.eps, o.rotary, o.rotary_base, o.effective_scale(), o.normalize};
}

// Closes the current block if it is full, so the next token has a block to go to.
void open_block_for_next_token(const CausalOperator& op, CausalState& state) {
  if (state.tokens_in_block() == state.block_size() && state.position() > 0)
    state.close_block(op.weights(), op.options().policy);
}

float diagonal_weight(const CausalOperator& op, const CausalState& state) {
  return block_row_weights(op.weights(), op.options().policy, state.current_block(), state.tail_blocks()).diagonal;
}

void check_pointers(const CausalSequence& s) {
  if (s.tokens < 0) throw Error(fmt::format("token count must be >= 0, got {}", s.tokens));
  if (s.tokens > 0 && (!s.q || !s.k || !s.v || !s.o)) throw Error("q, k, v and o must all be given");
  if (!s.state) throw Error("every sequence of a batch needs a state");
}

}  // namespace

CausalOperator::CausalOperator(CausalOptions options, MixingWeights weights)
    : options_(std::move(options)), weights_(std::move(weights)) {
  options_.validate();
  if (options_.policy != ContextPolicy::strict && weights_.blocks() < 2)
    throw Error(fmt::format("the {} policy needs a mixing matrix of at least 2 blocks, got {}",
                            to_string(options_.policy), weights_.blocks()));
}

CausalState CausalOperator::new_state() const {
  return CausalState(options_.layout, options_.block_size, weights_.blocks(), options_.normalize);
}

void CausalOperator::check_state(const CausalState& state) const {
  const auto& a = state.layout();
  const auto& b = options_.layout;
  if (a.heads != b.heads || a.kv_heads != b.kv_heads || a.dk != b.dk || a.dv != b.dv ||
      state.block_size() != options_.block_size || state.mixing_blocks() != weights_.blocks() ||
      state.normalized() != options_.normalize)
    throw Error("the state was made for a different operator configuration (heads, widths, block size, "
                "mixing size or normalization differ)");
}

void CausalOperator::check_admissible(const CausalState& state, long long tokens) const {
  check_state(state);
  if (options_.policy != ContextPolicy::strict || tokens <= 0) return;
  const long long last = state.position() + tokens - 1;
  if (last >= trained_window())
    throw RefusedError(fmt::format(
        "token position {} is past the trained window of {} tokens ({} blocks of {}); under the strict policy "
        "nothing past the window is computed: use the slide or slide_mean policy to go on",
        std::max(state.position(), trained_window()), trained_window(), weights_.blocks(), options_.block_size));
}

void CausalOperator::prefill(CausalState& state, const float* q, const float* k, const float* v, long long tokens,
                             float* o, long long chunk) const {
  check_pointers({&state, q, k, v, o, tokens});
  check_admissible(state, tokens);
  if (chunk <= 0) chunk = std::max(tokens, 1LL);
  const auto& L = options_.layout;
  for (long long c0 = 0; c0 < tokens; c0 += chunk) {
    const long long n = std::min(chunk, tokens - c0);
    const detail::Features f = detail::prepare_features(feature_spec(options_), q + c0 * L.heads * L.dk,
                                                        k + c0 * L.kv_heads * L.dk, n, state.position());
    const float* vc = v + c0 * L.kv_heads * L.dv;
    float* oc = o + c0 * L.heads * L.dv;
    for (long long r = 0; r < n;) {
      open_block_for_next_token(*this, state);
      const int seg = static_cast<int>(std::min<long long>(n - r, state.block_size() - state.tokens_in_block()));
      detail::prefill_segment(options_, diagonal_weight(*this, state), state, f, vc, r, seg, oc);
      state.advance(seg);
      r += seg;
    }
  }
}

void CausalOperator::decode(CausalState& state, const float* q, const float* k, const float* v, long long tokens,
                            float* o) const {
  check_pointers({&state, q, k, v, o, tokens});
  check_admissible(state, tokens);
  const auto& L = options_.layout;
  for (long long t = 0; t < tokens; ++t) {
    const CausalSequence one{&state, q + t * L.heads * L.dk, k + t * L.kv_heads * L.dk, v + t * L.kv_heads * L.dv,
                             o + t * L.heads * L.dv, 1};
    forward_batch({&one, 1});
  }
}

void CausalOperator::forward_batch(std::span<const CausalSequence> batch, long long chunk) const {
  for (const auto& s : batch) {
    check_pointers(s);
    check_admissible(*s.state, s.tokens);
  }
  for (size_t i = 0; i < batch.size(); ++i)
    for (size_t j = i + 1; j < batch.size(); ++j)
      if (batch[i].state == batch[j].state) throw Error("a batch names the same state twice");

  std::vector<const CausalSequence*> steps;
  for (const auto& s : batch) {
    if (s.tokens == 1)
      steps.push_back(&s);
    else if (s.tokens > 1)
      prefill(*s.state, s.q, s.k, s.v, s.tokens, s.o, chunk);
  }
  if (steps.empty()) return;

  const auto& L = options_.layout;
  const long long nsteps = static_cast<long long>(steps.size());
  std::vector<detail::Features> feats(steps.size());
  std::vector<float> diag(steps.size());
  const long long tasks = nsteps * L.kv_heads;
  // Threads pay off once the step streams more state than a thread start costs.
  const bool threaded = static_cast<double>(tasks) * L.dk * L.dv * L.group() > 1 << 18;
  std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic) if (threaded)
  for (long long i = 0; i < nsteps; ++i) {
    try {
      CausalState& st = *steps[i]->state;
      open_block_for_next_token(*this, st);
      diag[i] = diagonal_weight(*this, st);
      feats[i] = detail::prepare_features(feature_spec(options_), steps[i]->q, steps[i]->k, 1, st.position());
    } catch (...) {
#pragma omp critical
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
#pragma omp parallel for schedule(static) if (threaded)
  for (long long t = 0; t < tasks; ++t) {
    const long long i = t / L.kv_heads;
    const int g = static_cast<int>(t % L.kv_heads);
    const auto& f = feats[i];
    detail::decode_head(options_, diag[i], *steps[i]->state, f.qn.data(), f.kn.data(), f.qd, f.kd, steps[i]->v,
                        steps[i]->o, g);
  }
  for (auto* s : steps) s->state->advance(1);
}

}  // namespace mhla
