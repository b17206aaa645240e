#pragma once
// States after common token prefixes (a system prompt, a document asked many questions), kept
// so later prompts that start the same way skip prefilling them. Keys are the context policy
// and an XXH3 hash of the prefix; the tokens are kept too and compared, so a hash collision
// can never hand out a wrong state. Bounded in bytes, least recently used dropped first.
//
// Prefixes end on prefill-piece boundaries (multiples of the piece length), which is where the
// engine cuts every prompt: a prompt resumed from a cached state is then computed exactly as
// it would have been from scratch, bit for bit.
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "mhla/model.hpp"
#include "serve/metrics.hpp"

namespace mhla::serve {

class PrefixCache {
public:
  PrefixCache(std::size_t budget_bytes, long long piece, Metrics& metrics);

  struct Hit {
    std::size_t length = 0;  // tokens covered
    ModelState state;        // a copy
  };
  // The longest cached proper prefix of tokens (at least one token is left to prefill, so the
  // prompt's last logits come from the model). Counts a hit or a miss in the metrics.
  std::optional<Hit> lookup(ContextPolicy policy, std::span<const int> tokens);

  // Offsets worth a copy of the state while tokens are prefilled from `from`: the end of the
  // longest prefix an earlier prompt shared (the system prompt, the document) and the last
  // boundary before the prompt's end (the next turn of a conversation resent whole). Then
  // remembers tokens' prefixes for later prompts.
  std::vector<std::size_t> plan(ContextPolicy policy, std::span<const int> tokens, std::size_t from);

  void insert(ContextPolicy policy, std::span<const int> prefix, const ModelState& state);

  bool enabled() const { return budget_ > 0; }
  std::size_t bytes() const { return bytes_; }

private:
  struct Entry {
    std::uint64_t key = 0;
    ContextPolicy policy = ContextPolicy::strict;
    std::vector<int> tokens;
    ModelState state;
    std::size_t bytes = 0;
  };
  // The hash of every boundary prefix of tokens, shortest first (boundaries below tokens.size()).
  std::vector<std::uint64_t> boundary_keys(ContextPolicy policy, std::span<const int> tokens) const;
  Entry* find(std::uint64_t key, ContextPolicy policy, std::span<const int> prefix);
  void remember(std::uint64_t key);
  void publish();

  std::size_t budget_;
  long long piece_;
  Metrics& metrics_;
  std::size_t bytes_ = 0;
  std::list<Entry> entries_;  // most recently used first
  std::unordered_map<std::uint64_t, std::list<Entry>::iterator> by_key_;
  // Prefix hashes of recent prompts (no states): a prefix seen twice is worth caching.
  std::list<std::uint64_t> seen_order_;
  std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> seen_;
};

}  // namespace mhla::serve
