#pragma once
// The MHLA operator written the simplest way, in float64, straight from MHLA.md: every output
// is a weighted sum over all earlier tokens, o_t = sum_{s<=t} w(i(t), i(s)) (q_t . k_s) v_s.
// The fast paths are checked against it.
#include <random>
#include <vector>

#include "mhla/causal.hpp"

namespace mhla::test {

// Tokens [0, tokens) of one sequence; returns o [tokens][H][dv].
std::vector<double> reference_causal(const CausalOptions& opt, const MixingWeights& w, const std::vector<float>& q,
                                     const std::vector<float>& k, const std::vector<float>& v, long long tokens);

std::vector<double> reference_noncausal(const NonCausalOptions& opt, const std::vector<float>& mixing,
                                        const std::vector<float>& q, const std::vector<float>& k,
                                        const std::vector<float>& v, long long tokens);

std::vector<float> random_vector(std::mt19937_64& rng, size_t n, float lo = -1.0f, float hi = 1.0f);

// ||a - b||_2 / ||b||_2 in double (0 when both are zero).
double relative_error(const std::vector<float>& a, const std::vector<double>& b);
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

struct CausalInputs {
  std::vector<float> q, k, v;
};
// q and k drawn from [qk_lo, 1], v from [-1, 1].
CausalInputs random_inputs(std::mt19937_64& rng, const HeadLayout& layout, long long tokens, float qk_lo = -1.0f);

}  // namespace mhla::test
