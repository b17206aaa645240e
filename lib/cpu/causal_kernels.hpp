#pragma once
// CPU kernels of causal MHLA over prepared features (core/features.hpp). Each works on one
// sequence's state and the tokens of its current block only; the caller closes full blocks.
#include "core/features.hpp"
#include "mhla/options.hpp"
#include "mhla/state.hpp"

namespace mhla::detail {

// Rows r0 .. r0+n-1 of a chunk, all inside the state's current block, as matrix products:
// o = Q (P + w A) + w tril(Q K^T) V, then A += K^T V. `v` and `o` point at the chunk's row 0.
void prefill_segment(const CausalOptions& opt, float diagonal, CausalState& state, const Features& f,
                     const float* v, long long r0, int n, float* o);

// One token for key/value head g: A += k v^T and o = q (P + w A) for the query heads of g.
// q/k/qd/kd/v/o point at this token's row.
void decode_head(const CausalOptions& opt, float diagonal, CausalState& state, const float* qn, const float* kn,
                 const float* qd, const float* kd, const float* v, float* o, int g);

}  // namespace mhla::detail
