#include "serve/sequence.hpp"

#include "mhla/session.hpp"

namespace mhla::serve {

Sequence new_sequence(const Model& model, ContextPolicy policy) {
  Sequence s;
  s.state = model.new_state(policy);
  return s;
}

ModelState host_state(const Sequence& seq) {
  if (!seq.slot) return seq.state;
  return seq.slot.device()->download(seq.slot.slot());
}

void assign_state(Sequence& seq, ModelState state) {
  if (!seq.slot) {
    seq.state = std::move(state);
    return;
  }
  seq.slot.device()->upload(seq.slot.slot(), state);
  seq.state = ModelState{{}, state.policy};
}

std::size_t state_bytes(const Sequence& seq) {
  return seq.slot ? seq.slot.device()->slot_bytes() : seq.state.byte_size();
}

SessionSnapshot to_snapshot(const Sequence& seq, const Model& model, long long prefill_chunk) {
  SessionSnapshot s;
  s.model = model.fingerprint();
  s.model_directory = model.directory();
  s.block_size = model.config().block_size;
  s.summaries = SummaryStorage::f32;
  s.prefill_chunk = prefill_chunk;
  s.sampling = seq.sampler.params();
  s.rng = seq.sampler.save_rng();
  s.state = host_state(seq);
  s.history = seq.history;
  s.next_logits = seq.next_logits;
  return s;
}

Sequence from_snapshot(const SessionSnapshot& snapshot, const Model& model, const Tokenizer* tokenizer) {
  // resume() holds the compatibility checks; the session it builds is taken apart again.
  Session session = resume(snapshot, model, tokenizer);
  Sequence s;
  s.state = std::move(session.state());
  s.history = session.history();
  s.next_logits = session.next_logits();
  s.sampler = session.sampler();
  return s;
}

}  // namespace mhla::serve
