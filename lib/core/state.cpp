#include "mhla/state.hpp"

#include <algorithm>
#include <fmt/format.h>

#include "mhla/error.hpp"

namespace mhla {

CausalState::CausalState(const HeadLayout& layout, int block_size, int mixing_blocks, bool normalized)
    : layout_(layout),
      block_size_(block_size),
      mixing_blocks_(mixing_blocks),
      normalized_(normalized),
      recent_capacity_(mhla::recent_capacity(mixing_blocks)) {
  layout_.validate();
  if (block_size <= 0 || mixing_blocks <= 0)
    throw Error(fmt::format("state needs a positive block size and mixing size, got {} and {}", block_size,
                            mixing_blocks));
  kv_.assign(static_cast<size_t>(kFirstRecent) * layout_.kv_heads * matrix_elems(), 0.0f);
  if (normalized_) z_.assign(static_cast<size_t>(kFirstRecent) * layout_.kv_heads * layout_.dk, 0.0f);
}

size_t CausalState::max_byte_size() const {
  const size_t slots = kFirstRecent + static_cast<size_t>(recent_capacity_);
  return slots * layout_.kv_heads * (matrix_elems() + (normalized_ ? layout_.dk : 0)) * sizeof(float);
}

int CausalState::recent_slot(int r) const {
  return kFirstRecent + (recent_oldest_ + recent_count_ - r) % recent_capacity_;
}

void CausalState::push_recent() {
  const size_t per_slot = static_cast<size_t>(layout_.kv_heads) * matrix_elems();
  const size_t per_zslot = static_cast<size_t>(layout_.kv_heads) * layout_.dk;
  auto add_slot = [&](int dst, int src) {
    float* d = kv_.data() + dst * per_slot;
    const float* s = kv_.data() + src * per_slot;
    for (size_t j = 0; j < per_slot; ++j) d[j] += s[j];
    if (normalized_) {
      float* dz = z_.data() + dst * per_zslot;
      const float* sz = z_.data() + src * per_zslot;
      for (size_t j = 0; j < per_zslot; ++j) dz[j] += sz[j];
    }
  };
  auto copy_slot = [&](int dst, int src) {
    std::copy_n(kv_.data() + src * per_slot, per_slot, kv_.data() + dst * per_slot);
    if (normalized_) std::copy_n(z_.data() + src * per_zslot, per_zslot, z_.data() + dst * per_zslot);
  };

  if (recent_capacity_ == 0) {
    add_slot(kTail, kRunning);
    ++tail_blocks_;
  } else if (recent_count_ < recent_capacity_) {
    const int slot = kFirstRecent + (recent_oldest_ + recent_count_) % recent_capacity_;
    if (static_cast<size_t>(slot + 1) * per_slot > kv_.size()) {
      kv_.resize(static_cast<size_t>(slot + 1) * per_slot);
      if (normalized_) z_.resize(static_cast<size_t>(slot + 1) * per_zslot);
    }
    copy_slot(slot, kRunning);
    ++recent_count_;
  } else {
    const int oldest = kFirstRecent + recent_oldest_;
    add_slot(kTail, oldest);
    ++tail_blocks_;
    copy_slot(oldest, kRunning);
    recent_oldest_ = (recent_oldest_ + 1) % recent_capacity_;
  }
  ++folded_;
}

void CausalState::close_block(const MixingWeights& weights, ContextPolicy policy) {
  if (tokens_in_block() != block_size_) throw Error("internal: closing a block that is not full");
  // Weights first: a refusal must leave the state untouched.
  const BlockRowWeights row = block_row_weights(weights, policy, folded_ + 1,
                                                tail_blocks_ + (recent_count_ == recent_capacity_ ? 1 : 0));
  push_recent();
  const size_t me = matrix_elems();
  for (int h = 0; h < layout_.kv_heads; ++h) {
    std::fill_n(matrix(kRunning, h), me, 0.0f);
    float* p = matrix(kPrefix, h);
    std::fill_n(p, me, 0.0f);
    auto accumulate = [&](int slot, float w) {
      const float* s = matrix(slot, h);
      for (size_t j = 0; j < me; ++j) p[j] += w * s[j];
      if (normalized_) {
        const float* zs = normalizer(slot, h);
        float* pz = normalizer(kPrefix, h);
        for (int j = 0; j < layout_.dk; ++j) pz[j] += w * zs[j];
      }
    };
    if (normalized_) {
      std::fill_n(normalizer(kRunning, h), layout_.dk, 0.0f);
      std::fill_n(normalizer(kPrefix, h), layout_.dk, 0.0f);
    }
    if (tail_blocks_ > 0) accumulate(kTail, row.tail);
    for (int r = static_cast<int>(row.by_distance.size()); r >= 1; --r) accumulate(recent_slot(r), row.by_distance[r - 1]);
  }
}

}  // namespace mhla

namespace mhla {

void CausalState::reset_to(long long position, long long tail, int recent) {
  const long long folded = tail + recent;
  const bool counts_ok = position >= 0 && tail >= 0 && recent >= 0 && recent <= recent_capacity_ &&
                         (recent == recent_capacity_ || tail == 0) &&
                         (position == 0 ? folded == 0
                                        : position > folded * block_size_ && position <= (folded + 1) * block_size_);
  if (!counts_ok)
    throw Error(fmt::format("inconsistent state: position {} with {} tail blocks and {} recent summaries "
                            "(block size {}, ring capacity {})",
                            position, tail, recent, block_size_, recent_capacity_));
  position_ = position;
  folded_ = folded;
  tail_blocks_ = tail;
  recent_count_ = recent;
  recent_oldest_ = 0;
  const size_t slots = kFirstRecent + static_cast<size_t>(recent);
  kv_.assign(slots * layout_.kv_heads * matrix_elems(), 0.0f);
  if (normalized_) z_.assign(slots * layout_.kv_heads * layout_.dk, 0.0f);
}

}  // namespace mhla
