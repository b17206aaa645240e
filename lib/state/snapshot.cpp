// Snapshots of a session in memory, and sessions resumed from them.
#include <fmt/format.h>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "state/byte_io.hpp"
#include "state/compat.hpp"

namespace mhla {

std::string_view to_string(SummaryStorage s) { return s == SummaryStorage::bf16 ? "bf16" : "f32"; }

SummaryStorage parse_summary_storage(std::string_view name) {
  if (name == "f32") return SummaryStorage::f32;
  if (name == "bf16") return SummaryStorage::bf16;
  throw Error(fmt::format("unknown summary storage '{}': use f32 or bf16", name));
}

SessionSnapshot snapshot(const Session& session, SummaryStorage summaries) {
  const Model& m = session.model();
  SessionSnapshot s;
  s.model = m.fingerprint();
  s.model_directory = m.directory();
  s.block_size = m.config().block_size;
  s.summaries = summaries;
  s.prefill_chunk = session.prefill_chunk();
  s.sampling = session.sampler().params();
  s.rng = session.sampler().save_rng();
  s.state = session.state();
  s.history = session.history();
  s.next_logits = session.next_logits();
  // The snapshot holds what a bf16 file would, so resuming it equals resuming the file.
  if (summaries == SummaryStorage::bf16) {
    for (CausalState& layer : s.state.layers) {
      const auto& l = layer.layout();
      for (int r = 1; r <= layer.recent_count(); ++r) {
        for (int h = 0; h < l.kv_heads; ++h) {
          float* mat = layer.matrix(layer.recent_slot(r), h);
          for (size_t i = 0; i < layer.matrix_elems(); ++i) mat[i] = state_io::round_bf16(mat[i]);
          if (!layer.normalized()) continue;
          float* z = layer.normalizer(layer.recent_slot(r), h);
          for (int i = 0; i < l.dk; ++i) z[i] = state_io::round_bf16(z[i]);
        }
      }
    }
  }
  return s;
}

Session resume(const SessionSnapshot& s, const Model& model, const Tokenizer* tokenizer, const ResumeOptions& options) {
  const std::string_view where = "the snapshot";
  state_format::check_same_model(s.model, s.model_directory, model, where);
  if (s.state.layers.size() != static_cast<size_t>(model.config().num_layers) ||
      s.history.size() != static_cast<size_t>(s.state.position()))
    throw Error(fmt::format("{} is inconsistent: {} layers of state, {} history tokens at position {}", where,
                            s.state.layers.size(), s.history.size(), s.state.position()));
  // Only strict may change, to a slide policy (they agree inside the window).
  const ContextPolicy policy = options.policy.value_or(s.state.policy);
  if (policy != s.state.policy && s.state.policy != ContextPolicy::strict)
    throw Error(fmt::format("cannot resume a session saved with the {} policy under the {} policy: only strict can "
                            "change (to a slide policy); resume it with {}",
                            to_string(s.state.policy), to_string(policy), to_string(s.state.policy)));
  SessionOptions o;
  o.policy = policy;
  o.prefill_chunk = options.prefill_chunk.value_or(s.prefill_chunk);
  o.sampling = s.sampling;
  o.device = options.device;
  Session session(model, tokenizer, o);
  state_format::check_same_math(s.block_size, s.state.layers.front().normalized(), model,
                                model.new_state().layers.front().normalized(), where);
  session.sampler().load_rng(s.rng);
  ModelState state = s.state;
  state.policy = policy;
  session.restore(std::move(state), s.history, s.next_logits);
  return session;
}

}  // namespace mhla
