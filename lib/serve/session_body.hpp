#pragma once
// What a stateful session holds besides its identity: its sequence, the transcript of what
// went in and came out, and the state at the start of each recent turn (a recurrent state
// cannot be cut back like a KV cache, so undo and regenerate restore these copies).
#include <deque>
#include <vector>

#include "serve/chat_template.hpp"
#include "serve/sequence.hpp"

namespace mhla::serve {

struct Turn {
  ModelState state;                // at the turn's start
  std::vector<float> next_logits;  // at the turn's start
  std::size_t history_size = 0;    // tokens consumed at the turn's start
  std::vector<int> input;          // tokens the turn appended before it generated
  std::size_t transcript_size = 0; // transcript entries at the turn's start
  std::size_t input_entries = 0;   // transcript entries its input added
  bool has_reply = false;
};

struct SessionBody {
  Sequence seq;
  // Messages (system, user, assistant) and raw appends (role "text"), in order.
  std::vector<ChatMessage> transcript;
  std::deque<Turn> turns;  // oldest first, at most --max-turns-kept

  // Bytes held in memory: the state at its largest (it grows as blocks complete) and the
  // turn starts as they are.
  std::size_t charge(const Model& model) const {
    std::size_t bytes = model.max_state_bytes();
    for (const auto& t : turns) bytes += t.state.byte_size() + t.next_logits.size() * sizeof(float);
    return bytes;
  }
};

}  // namespace mhla::serve
