#pragma once
// One token sequence the engine runs: its recurrent state, the tokens it consumed, the logits
// predicting its next token and its sampler (with the random generator's position). Copying it
// forks the sequence. Sessions, turn starts and in-flight requests all hold these.
//
// On the CPU the state is `state`. On a device (lib/serve/backend.hpp) it lives in `slot`, one
// state slot of the device model of its policy, and `state` keeps only the policy; the helpers
// below read and write the state wherever it is.
#include <vector>

#include "mhla/checkpoint.hpp"
#include "mhla/device.hpp"
#include "mhla/model.hpp"
#include "mhla/sampling.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla::serve {

struct Sequence {
  ModelState state;
  DeviceSlot slot;  // set on a device; copying the sequence then forks it into a new slot
  std::vector<int> history;
  std::vector<float> next_logits;
  Sampler sampler{SamplingParams{}};

  long long position() const { return slot ? slot.device()->position(slot.slot()) : state.position(); }
};

Sequence new_sequence(const Model& model, ContextPolicy policy);

// The state in the CPU form: a copy, or downloaded from the sequence's slot.
ModelState host_state(const Sequence& seq);
// Replaces the state (on a device: uploads it into the sequence's slot). It must run the
// sequence's policy.
void assign_state(Sequence& seq, ModelState state);
// Bytes the state takes now (on a device: the slot it occupies).
std::size_t state_bytes(const Sequence& seq);

// The checkpoint form (include/mhla/checkpoint.hpp), recent summaries kept in fp32.
SessionSnapshot to_snapshot(const Sequence& seq, const Model& model, long long prefill_chunk);
// Checks the snapshot belongs to this model and these math options (as resuming a state file
// does); throws mhla::Error saying what differs. The sequence's state is on the CPU.
Sequence from_snapshot(const SessionSnapshot& snapshot, const Model& model, const Tokenizer* tokenizer);

}  // namespace mhla::serve
