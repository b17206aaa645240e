#include "serve/prefix_cache.hpp"

#include <algorithm>
#include <xxhash.h>

namespace mhla::serve {

namespace {
constexpr std::size_t kSeenCapacity = std::size_t{1} << 16;  // prefix hashes remembered
}

PrefixCache::PrefixCache(std::size_t budget_bytes, long long piece, Metrics& metrics)
    : budget_(budget_bytes), piece_(piece), metrics_(metrics) {}

std::vector<std::uint64_t> PrefixCache::boundary_keys(ContextPolicy policy, std::span<const int> tokens) const {
  std::vector<std::uint64_t> keys;
  if (tokens.empty()) return keys;
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset_withSeed(st, static_cast<XXH64_hash_t>(policy) + 1);
  const std::size_t piece = static_cast<std::size_t>(piece_);
  for (std::size_t end = piece; end < tokens.size(); end += piece) {
    XXH3_64bits_update(st, tokens.data() + end - piece, piece * sizeof(int));
    keys.push_back(XXH3_64bits_digest(st));
  }
  XXH3_freeState(st);
  return keys;
}

PrefixCache::Entry* PrefixCache::find(std::uint64_t key, ContextPolicy policy, std::span<const int> prefix) {
  const auto it = by_key_.find(key);
  if (it == by_key_.end()) return nullptr;
  Entry& e = *it->second;
  if (e.policy != policy || !std::equal(e.tokens.begin(), e.tokens.end(), prefix.begin(), prefix.end())) return nullptr;
  return &e;
}

std::optional<PrefixCache::Hit> PrefixCache::lookup(ContextPolicy policy, std::span<const int> tokens) {
  if (!enabled()) return std::nullopt;
  const auto keys = boundary_keys(policy, tokens);
  if (keys.empty()) return std::nullopt;
  for (std::size_t i = keys.size(); i-- > 0;) {
    const std::size_t length = (i + 1) * static_cast<std::size_t>(piece_);
    Entry* e = find(keys[i], policy, tokens.first(length));
    if (!e) continue;
    entries_.splice(entries_.begin(), entries_, by_key_[keys[i]]);
    ++metrics_.prefix_hits;
    return Hit{length, e->state};
  }
  ++metrics_.prefix_misses;
  return std::nullopt;
}

std::vector<std::size_t> PrefixCache::plan(ContextPolicy policy, std::span<const int> tokens, std::size_t from) {
  std::vector<std::size_t> points;
  if (!enabled()) return points;
  const auto keys = boundary_keys(policy, tokens);
  if (keys.empty()) return points;
  const std::size_t piece = static_cast<std::size_t>(piece_);
  const auto wanted = [&](std::size_t i) {
    const std::size_t length = (i + 1) * piece;
    return length > from && !find(keys[i], policy, tokens.first(length));
  };
  for (std::size_t i = keys.size(); i-- > 0;)
    if (seen_.count(keys[i])) {
      if (wanted(i)) points.push_back((i + 1) * piece);
      break;
    }
  if (wanted(keys.size() - 1)) points.push_back(keys.size() * piece);
  for (const auto key : keys) remember(key);
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  return points;
}

void PrefixCache::remember(std::uint64_t key) {
  if (const auto it = seen_.find(key); it != seen_.end()) {
    seen_order_.splice(seen_order_.begin(), seen_order_, it->second);
    return;
  }
  seen_order_.push_front(key);
  seen_[key] = seen_order_.begin();
  if (seen_order_.size() > kSeenCapacity) {
    seen_.erase(seen_order_.back());
    seen_order_.pop_back();
  }
}

void PrefixCache::insert(ContextPolicy policy, std::span<const int> prefix, const ModelState& state) {
  if (!enabled()) return;
  if (prefix.empty() || prefix.size() % static_cast<std::size_t>(piece_) != 0) return;
  // One-shot XXH3 equals the streamed digest boundary_keys() takes at the same length.
  const std::uint64_t key =
      XXH3_64bits_withSeed(prefix.data(), prefix.size() * sizeof(int), static_cast<XXH64_hash_t>(policy) + 1);
  if (by_key_.count(key)) {
    entries_.splice(entries_.begin(), entries_, by_key_[key]);
    return;
  }
  const std::size_t bytes = state.byte_size() + prefix.size() * sizeof(int);
  if (bytes > budget_) return;
  while (bytes_ + bytes > budget_) {
    bytes_ -= entries_.back().bytes;
    by_key_.erase(entries_.back().key);
    entries_.pop_back();
    ++metrics_.prefix_evictions;
  }
  entries_.push_front(Entry{key, policy, std::vector<int>(prefix.begin(), prefix.end()), state, bytes});
  by_key_[key] = entries_.begin();
  bytes_ += bytes;
  publish();
}

void PrefixCache::publish() {
  metrics_.prefix_cache_bytes = static_cast<long long>(bytes_);
  metrics_.prefix_cache_entries = static_cast<long long>(entries_.size());
}

}  // namespace mhla::serve
