#pragma once
// Mixing weights W[i][b] >= 0 between query block i and key/value block b (MHLA.md section 3),
// and how a context policy extends them past the trained window of L blocks.
#include <span>
#include <vector>

#include "mhla/options.hpp"

namespace mhla {

class MixingWeights {
public:
  // The effective weights tril(clamp(M, 1e-5, 1)) of a learned L x L matrix (row-major).
  // Throws mhla::Error if M holds a NaN or infinity or does not have L*L entries.
  static MixingWeights from_learned(std::span<const float> m, int blocks);
  // The paper's locality-biased initialization: W[i][j] = 1 - (i-j)/(i+1), rows summing to 1.
  static MixingWeights locality_init(int blocks);
  // The research code's initialization: W[i][b] = 1/(i+1) for b <= i.
  static MixingWeights harmonic_init(int blocks);
  // Plain linear attention: every weight 1.
  static MixingWeights uniform(int blocks);

  int blocks() const { return blocks_; }
  float at(int i, int b) const { return w_[static_cast<size_t>(i) * blocks_ + b]; }
  const std::vector<float>& values() const { return w_; }

private:
  MixingWeights(int blocks, std::vector<float> w) : blocks_(blocks), w_(std::move(w)) {}
  int blocks_ = 0;
  std::vector<float> w_;
};

// The weights a query block uses under a context policy, by distance r = i - b >= 1 for the
// recent blocks, plus one weight shared by every summary folded into the tail sum.
struct BlockRowWeights {
  float diagonal = 0;              // W[i][i]
  std::vector<float> by_distance;  // by_distance[r-1] = weight of block i-r, r = 1..recent
  float tail = 0;                  // weight applied to the tail sum (already divided for slide_mean)
};

// How many completed summaries are kept one by one; older ones are summed into the tail.
// L-2 for L >= 2 (MHLA.md section 4), so the state stays bounded under every policy.
int recent_capacity(int blocks);

// Row of weights for query block i given how many blocks are folded into the tail.
// Throws mhla::RefusedError for i >= L under the strict policy.
BlockRowWeights block_row_weights(const MixingWeights& w, ContextPolicy policy, long long i,
                                  long long tail_blocks);

// The dense effective weight of block b (b <= i) for query block i: the same numbers as
// block_row_weights, one pair at a time (for references and the parallel form).
double effective_weight(const MixingWeights& w, ContextPolicy policy, long long i, long long b);

// Non-causal mixing from Euclidean distances between 2-D block centres (the DiT research
// code): W = 1 - D/max(D), then each column divided by its sum. M = (h/s)*(w/s) blocks.
std::vector<float> grid_distance_mixing(const WindowGrid& grid);

}  // namespace mhla
