// Reading a state file against a model: every section is checked before anything is returned.
#include <fmt/format.h>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "state/compat.hpp"
#include "state/format.hpp"
#include "state/state_file.hpp"

namespace mhla {

using namespace state_format;

SessionSnapshot read_state_file(const std::string& path, const Model& model) {
  StateFileReader file(path);
  // The next section, intact and with the tag that belongs at its place.
  auto take = [&](std::string_view tag) {
    auto s = file.next();
    if (!s) damaged(file.where(), fmt::format("it ends before its '{}' section", tag));
    if (!s->checksum_ok) damaged(file.where(*s), "the section fails its checksum");
    if (s->tag != tag) damaged(file.where(*s), fmt::format("'{}' is there where '{}' belongs", s->tag, tag));
    return std::move(*s);
  };
  auto reader = [&](const RawSection& s) { return state_io::ByteReader(s.payload, file.where(s)); };

  const RawSection model_raw = take(kModelTag);
  auto in = reader(model_raw);
  ModelSection saved = decode_model(in);
  const std::uint32_t fixed = fixed_sections(file.version());
  if (file.section_count() != fixed + static_cast<std::uint32_t>(saved.fingerprint.num_layers))
    damaged(file.where(),
            fmt::format("the preamble counts {} sections but a {}-layer model needs {} in format version {}",
                        file.section_count(), saved.fingerprint.num_layers, fixed + saved.fingerprint.num_layers,
                        file.version()));
  check_same_model(saved.fingerprint, saved.directory, model, file.where());

  const RawSection options_raw = take(kOptionsTag);
  in = reader(options_raw);
  const OptionsSection options = decode_options(in);
  ModelState state = model.new_state(options.policy);
  check_same_math(options.block_size, options.normalized, model, state.layers.front().normalized(), file.where());

  const RawSection sequence_raw = take(kSequenceTag);
  in = reader(sequence_raw);
  SequenceSection sequence = decode_sequence(in, model.config().vocab_size);
  if (options.policy == ContextPolicy::strict && sequence.position > model.trained_window())
    in.fail(
        fmt::format("position {} is past the trained window of {} tokens, which the strict policy never "
                    "reaches",
                    sequence.position, model.trained_window()));

  const RawSection sampler_raw = take(kSamplerTag);
  in = reader(sampler_raw);
  SamplerSection sampler = decode_sampler(in);

  std::vector<TranscriptEntry> transcript;
  if (file.version() >= 2) {
    const RawSection transcript_raw = take(kTranscriptTag);
    in = reader(transcript_raw);
    transcript = decode_transcript(in);
  }

  for (size_t l = 0; l < state.layers.size(); ++l) {
    const RawSection layer_raw = take(kLayerTag);
    in = reader(layer_raw);
    decode_layer(in, static_cast<int>(l), sequence.position, options.summaries, state.layers[l]);
  }
  file.finish();

  SessionSnapshot s;
  s.model = std::move(saved.fingerprint);
  s.model_directory = std::move(saved.directory);
  s.block_size = options.block_size;
  s.summaries = options.summaries;
  s.prefill_chunk = options.prefill_chunk;
  s.sampling = sampler.params;
  s.rng = std::move(sampler.rng);
  s.state = std::move(state);
  s.history = std::move(sequence.history);
  s.next_logits = std::move(sequence.next_logits);
  s.transcript = std::move(transcript);
  return s;
}

}  // namespace mhla
