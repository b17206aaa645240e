// Writing state files, from a session directly (no copy of its state) or from a snapshot.
#include <fmt/format.h>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "state/format.hpp"
#include "state/state_file.hpp"

namespace mhla {

using namespace state_format;

namespace {

struct Contents {
  const ModelFingerprint& model;
  std::string_view directory;
  int block_size;
  SummaryStorage summaries;
  long long prefill_chunk;
  const SamplingParams& sampling;
  std::string rng;
  const ModelState& state;
  const std::vector<int>& history;
  const std::vector<float>& next_logits;
  const std::vector<TranscriptEntry>& transcript;
};

void write(const std::string& path, const Contents& c) {
  if (c.state.layers.size() != static_cast<size_t>(c.model.num_layers) ||
      c.history.size() != static_cast<size_t>(c.state.position()))
    throw Error(
        fmt::format("cannot save to '{}': the session is inconsistent ({} layers of state for a {}-layer "
                    "model, {} history tokens at position {})",
                    path, c.state.layers.size(), c.model.num_layers, c.history.size(), c.state.position()));
  const std::uint32_t version = version_for(c.transcript);
  const std::string transcript = version >= 2 ? encode_transcript(c.transcript) : std::string();
  state_io::AtomicFile file(path);
  write_preamble(file, version, fixed_sections(version) + static_cast<std::uint32_t>(c.state.layers.size()));
  write_section(file, kModelTag, encode_model(c.model, c.directory));
  const OptionsSection options{c.block_size, c.state.policy, c.summaries, c.state.layers.front().normalized(),
                               c.prefill_chunk};
  write_section(file, kOptionsTag, encode_options(options));
  write_section(file, kSequenceTag, encode_sequence(c.state.position(), c.history, c.next_logits));
  write_section(file, kSamplerTag, encode_sampler(c.sampling, c.rng));
  if (version >= 2) write_section(file, kTranscriptTag, transcript);
  // One layer at a time, so saving needs memory for one layer's bytes only.
  for (size_t l = 0; l < c.state.layers.size(); ++l)
    write_section(file, kLayerTag, encode_layer(static_cast<int>(l), c.state.layers[l], c.summaries));
  file.commit();
}

}  // namespace

void write_state_file(const std::string& path, const SessionSnapshot& s) {
  write(path, {s.model, s.model_directory, s.block_size, s.summaries, s.prefill_chunk, s.sampling, s.rng, s.state,
               s.history, s.next_logits, s.transcript});
}

void save_session(const std::string& path, const Session& session, SummaryStorage summaries) {
  const Model& m = session.model();
  write(path, {m.fingerprint(), m.directory(), m.config().block_size, summaries, session.prefill_chunk(),
               session.sampler().params(), session.sampler().save_rng(), session.state(), session.history(),
               session.next_logits(), {}});
}

}  // namespace mhla
