#pragma once
// The recurrent state of causal MHLA for one sequence and one layer (MHLA.md section 4).
//
// Representation: per key/value head, dk x dv matrices (and dk-vectors z for the normalized
// form) in "slots", slot-major:
//   slot 0  P     the mixed prefix of the current block, sum_{b<i} W[i][b] S_b
//   slot 1  A     the running sum k v^T over the current block's tokens seen so far
//   slot 2  tail  the sum of the completed summaries no longer kept one by one
//   slot 3+ the most recent completed block summaries, a ring of at most recent_capacity(L)
// The ring grows as blocks complete, so a short sequence holds only three slots.
// The block transition is lazy: when the current block is full, A keeps it until the next token
// arrives, so a state depends only on the tokens consumed, never on the policy.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "mhla/mixing.hpp"
#include "mhla/options.hpp"

namespace mhla {

class CausalState {
public:
  CausalState() = default;
  CausalState(const HeadLayout& layout, int block_size, int mixing_blocks, bool normalized);

  long long position() const { return position_; }   // tokens consumed
  long long current_block() const { return folded_; } // index of the block A belongs to
  long long tail_blocks() const { return tail_blocks_; }
  int recent_count() const { return recent_count_; }
  int recent_capacity() const { return recent_capacity_; }
  bool normalized() const { return normalized_; }
  const HeadLayout& layout() const { return layout_; }
  int block_size() const { return block_size_; }
  int mixing_blocks() const { return mixing_blocks_; }

  // Bytes held by the tensors of this state now.
  size_t byte_size() const { return (kv_.size() + z_.size()) * sizeof(float); }
  // Bytes this state can grow to (all ring slots in use).
  size_t max_byte_size() const;

  size_t matrix_elems() const { return static_cast<size_t>(layout_.dk) * layout_.dv; }
  // dk x dv matrix of a slot for one kv head, and its dk-vector normalizer (normalized only).
  float* matrix(int slot, int kv_head) { return kv_.data() + slot_offset(slot, kv_head); }
  const float* matrix(int slot, int kv_head) const { return kv_.data() + slot_offset(slot, kv_head); }
  float* normalizer(int slot, int kv_head) { return z_.data() + zslot_offset(slot, kv_head); }
  const float* normalizer(int slot, int kv_head) const { return z_.data() + zslot_offset(slot, kv_head); }

  static constexpr int kPrefix = 0;
  static constexpr int kRunning = 1;
  static constexpr int kTail = 2;
  static constexpr int kFirstRecent = 3;
  // Slot of the recent summary at distance r >= 1 from the current block (r = 1: newest).
  int recent_slot(int r) const;

  // Tokens in the current block so far (C when the block is full and not yet closed).
  int tokens_in_block() const { return static_cast<int>(position_ - folded_ * block_size_); }

  // Closes a full current block: A becomes the newest recent summary (the oldest recent one is
  // folded into the tail when the ring is full), A is cleared, and P is recomputed with the
  // weights of the new block. Called by the backends when a token arrives in a full block.
  void close_block(const MixingWeights& weights, ContextPolicy policy);

  void advance(long long tokens) { position_ += tokens; }

  // Re-shapes the state for a position filled in from outside (the parallel form, checkpoint
  // loading): `recent` summaries kept one by one and `tail` blocks summed, every slot zeroed.
  // The caller then writes P, A, the tail and the recent summaries (recent_slot(1) newest).
  // Throws mhla::Error when the counts cannot describe a state at that position.
  void reset_to(long long position, long long tail, int recent);

  // The raw data, for checkpoints and device copies.
  const std::vector<float>& kv_data() const { return kv_; }
  const std::vector<float>& z_data() const { return z_; }

private:
  size_t slot_offset(int slot, int kv_head) const {
    return (static_cast<size_t>(slot) * layout_.kv_heads + kv_head) * matrix_elems();
  }
  size_t zslot_offset(int slot, int kv_head) const {
    return (static_cast<size_t>(slot) * layout_.kv_heads + kv_head) * layout_.dk;
  }
  void push_recent();

  HeadLayout layout_;
  int block_size_ = 0;
  int mixing_blocks_ = 0;
  bool normalized_ = false;
  int recent_capacity_ = 0;
  long long position_ = 0;
  long long folded_ = 0;       // completed blocks: recent_count_ + tail_blocks_
  long long tail_blocks_ = 0;
  int recent_count_ = 0;
  int recent_oldest_ = 0;      // ring index (0-based within the recent slots) of the oldest entry
  std::vector<float> kv_;
  std::vector<float> z_;
};

}  // namespace mhla
