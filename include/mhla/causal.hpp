#pragma once
// Causal MHLA on the CPU in its three execution forms, all carrying state:
//   parallel  - a whole sequence at once from a fresh state (every block summary in memory);
//   prefill   - chunked: any number of tokens from any position, in chunks of any length;
//   decode    - recurrent: one token at a time.
// For the same inputs all three give the same outputs and the same final state within
// floating-point tolerance (MHLA.md section 4).
//
// Tensors are dense row-major fp32: q [n][H][dk], k [n][Hkv][dk], v [n][Hkv][dv] are the raw
// projections (the operator applies the feature map, rotary and scale); o [n][H][dv].
#include <span>

#include "mhla/mixing.hpp"
#include "mhla/options.hpp"
#include "mhla/state.hpp"

namespace mhla {

// One sequence's share of a batched call: its own state, position and token count.
struct CausalSequence {
  CausalState* state = nullptr;
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* o = nullptr;
  long long tokens = 0;
};

class CausalOperator {
public:
  // Validates the options against the weights; throws mhla::Error naming the problem.
  CausalOperator(CausalOptions options, MixingWeights weights);

  const CausalOptions& options() const { return options_; }
  const MixingWeights& weights() const { return weights_; }
  long long trained_window() const { return static_cast<long long>(weights_.blocks()) * options_.block_size; }

  CausalState new_state() const;

  // Chunked prefill; chunk <= 0 means one chunk. Refuses (mhla::RefusedError, state untouched)
  // input that would cross the trained window under the strict policy.
  void prefill(CausalState& state, const float* q, const float* k, const float* v, long long tokens,
               float* o, long long chunk = 0) const;
  // The recurrent form: `tokens` single-token steps.
  void decode(CausalState& state, const float* q, const float* k, const float* v, long long tokens,
              float* o) const;
  // The parallel form; `state` must be fresh (position 0) and holds the final state afterwards.
  void parallel(CausalState& state, const float* q, const float* k, const float* v, long long tokens,
                float* o) const;

  // Many sequences in one call: single-token sequences share one parallel decode pass, longer
  // ones are prefilled in chunks. Each sequence gets bitwise the result it gets alone.
  // Every sequence is checked before any state changes.
  void forward_batch(std::span<const CausalSequence> batch, long long chunk = 0) const;

  // Throws mhla::RefusedError if `tokens` more tokens from `state` are refused by the policy.
  void check_admissible(const CausalState& state, long long tokens) const;

private:
  void check_state(const CausalState& state) const;
  CausalOptions options_;
  MixingWeights weights_;
};

// Non-causal MHLA (MHLA.md section 5): tokens split into M blocks, every block mixes all M
// summaries with the M x M matrix `mixing` (row i: query block, column b: summary), used as given.
void noncausal_forward(const NonCausalOptions& options, std::span<const float> mixing,
                       const float* q, const float* k, const float* v, long long tokens, float* o);

}  // namespace mhla
