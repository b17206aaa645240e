#pragma once
// One token sequence the engine runs: its recurrent state, the tokens it consumed, the logits
// predicting its next token and its sampler (with the random generator's position). Copying it
// forks the sequence. Sessions, turn starts and in-flight requests all hold these.
#include <vector>

#include "mhla/checkpoint.hpp"
#include "mhla/model.hpp"
#include "mhla/sampling.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla::serve {

struct Sequence {
  ModelState state;
  std::vector<int> history;
  std::vector<float> next_logits;
  Sampler sampler{SamplingParams{}};

  long long position() const { return state.position(); }
};

Sequence new_sequence(const Model& model, ContextPolicy policy);

// The checkpoint form (include/mhla/checkpoint.hpp), recent summaries kept in fp32.
SessionSnapshot to_snapshot(const Sequence& seq, const Model& model, long long prefill_chunk);
// Checks the snapshot belongs to this model and these math options (as resuming a state file
// does); throws mhla::Error saying what differs.
Sequence from_snapshot(const SessionSnapshot& snapshot, const Model& model, const Tokenizer* tokenizer);

}  // namespace mhla::serve
