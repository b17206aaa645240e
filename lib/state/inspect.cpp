// A read-only report on a state file, without a model: what each intact section says, and the
// first problem found. Decoding a layer needs the model section's shapes and the position.
#include <fmt/format.h>
#include <map>
#include <optional>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "state/format.hpp"
#include "state/state_file.hpp"

namespace mhla {

using namespace state_format;

namespace {

std::string_view expected_tag(std::uint32_t index, std::uint32_t version) {
  static constexpr std::string_view fixed[] = {kModelTag, kOptionsTag, kSequenceTag, kSamplerTag, kTranscriptTag};
  return index <= fixed_sections(version) ? fixed[index - 1] : kLayerTag;
}

// What the intact sections said so far.
struct Seen {
  std::uint32_t version = 0;
  std::optional<ModelSection> model;
  std::optional<OptionsSection> options;
  std::optional<long long> position;
  std::uint64_t memory_bytes = 0;
  std::uint64_t max_memory_bytes = 0;
  std::uint64_t tensor_bytes = 0;
  int layers = 0;
};

std::vector<std::string> model_details(const ModelSection& s) {
  const auto& f = s.fingerprint;
  return {fmt::format("model: loaded from {}", s.directory),
          fmt::format("architecture: hidden {}, {} layers, {} heads ({} kv), dk {}, dv {}, intermediate {}, vocab {}, "
                      "L {}, feature map {}, {} embeddings, output gate {}, norm_eps {}, rope_theta {}",
                      f.hidden_size, f.num_layers, f.num_heads, f.num_kv_heads, f.head_k_dim, f.head_v_dim,
                      f.intermediate_size, f.vocab_size, f.mixing_blocks, to_string(f.feature_map),
                      f.tie_word_embeddings ? "tied" : "untied", f.use_output_gate ? "on" : "off", f.norm_eps,
                      f.rope_theta),
          fmt::format("weights: {} tensors, XXH3-64 {:016x}", f.tensors.size(), f.weights_hash)};
}

std::vector<std::string> options_details(const OptionsSection& o, const Seen& seen) {
  const std::string window = seen.model ? fmt::format(" (trained window {} tokens)",
                                                      1LL * o.block_size * seen.model->fingerprint.mixing_blocks)
                                        : std::string();
  return {fmt::format("block size {}{}, policy {}, state fp32, completed summaries stored as {}, {}, prefill chunk {}",
                      o.block_size, window, to_string(o.policy), to_string(o.summaries),
                      o.normalized ? "normalized" : "unnormalized", o.prefill_chunk)};
}

std::vector<std::string> sampler_details(const SamplerSection& s) {
  const auto& p = s.params;
  return {fmt::format("sampler: temperature {}, top_k {}, top_p {}, min_p {}, repeat_penalty {} (window {}), seed {}",
                      p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_window, p.seed),
          fmt::format("RNG state: {} bytes", s.rng.size())};
}

std::vector<std::string> transcript_details(const std::vector<TranscriptEntry>& transcript) {
  std::map<std::string, int> roles;
  size_t bytes = 0;
  for (const auto& e : transcript) {
    ++roles[e.role];
    bytes += e.content.size();
  }
  std::string counts;
  for (const auto& [role, n] : roles) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", n, role);
  return {fmt::format("transcript: {} entries ({}), {} bytes of text", transcript.size(), counts.empty() ? "none" : counts,
                      bytes)};
}

std::vector<std::string> layer_details(state_io::ByteReader& in, const RawSection& raw, Seen& seen) {
  if (!seen.model || !seen.options || !seen.position)
    return {"not decoded: the model, options or sequence section is missing or damaged"};
  const auto& f = seen.model->fingerprint;
  const auto& o = *seen.options;
  const int index = static_cast<int>(raw.index - fixed_sections(seen.version) - 1);
  // The three fixed slots must be in the payload before the state allocates them.
  const double least =
      3.0 * 4 * f.num_kv_heads * (1.0 * f.head_k_dim * f.head_v_dim + (o.normalized ? f.head_k_dim : 0));
  if (least > static_cast<double>(raw.payload.size()))
    in.fail(fmt::format("{} payload bytes cannot hold the tensors of a layer of this model", raw.payload.size()));
  CausalState state({f.num_heads, f.num_kv_heads, f.head_k_dim, f.head_v_dim}, o.block_size, f.mixing_blocks,
                    o.normalized);
  decode_layer(in, index, *seen.position, o.summaries, state);
  const std::uint64_t file_bytes = layer_tensor_bytes(state, o.summaries);
  seen.memory_bytes += state.byte_size();
  seen.max_memory_bytes += state.max_byte_size();
  seen.tensor_bytes += file_bytes;
  ++seen.layers;
  return {fmt::format("layer {}: {} blocks in the tail sum, {} recent summaries; {} bytes in memory, {} in the file",
                      index, state.tail_blocks(), state.recent_count(), state.byte_size(), file_bytes)};
}

std::vector<std::string> decode(const RawSection& raw, const std::string& where, Seen& seen) {
  state_io::ByteReader in(raw.payload, where);
  const std::string_view want = expected_tag(raw.index, seen.version);
  if (raw.tag != want) in.fail(fmt::format("'{}' is there where '{}' belongs", raw.tag, want));
  if (want == kModelTag) {
    seen.model = decode_model(in);
    return model_details(*seen.model);
  }
  if (want == kOptionsTag) {
    seen.options = decode_options(in);
    return options_details(*seen.options, seen);
  }
  if (want == kSequenceTag) {
    if (!seen.model) return {"not decoded: the model section is damaged"};
    const SequenceSection s = decode_sequence(in, seen.model->fingerprint.vocab_size);
    seen.position = s.position;
    return {fmt::format("position {}: {} tokens of history, {} next logits", s.position, s.history.size(),
                        s.next_logits.size())};
  }
  if (want == kSamplerTag) return sampler_details(decode_sampler(in));
  if (want == kTranscriptTag) return transcript_details(decode_transcript(in));
  return layer_details(in, raw, seen);
}

}  // namespace

StateFileReport inspect_state_file(const std::string& path) {
  StateFileReader file(path);
  StateFileReport report;
  report.file_bytes = file.file_bytes();
  report.version = file.version();
  Seen seen;
  seen.version = file.version();
  const std::uint32_t fixed = fixed_sections(file.version());
  auto note = [&](const std::string& problem) {
    if (report.problem.empty()) report.problem = problem;
  };
  try {
    while (auto raw = file.next()) {
      StateSectionReport r{raw->tag, raw->offset, raw->bytes(), raw->checksum_ok, {}};
      if (!raw->checksum_ok) {
        note(
            fmt::format("{}: the section fails its checksum; the file is damaged: use an intact copy or save the "
                        "session again",
                        file.where(*raw)));
      } else {
        try {
          r.details = decode(*raw, file.where(*raw), seen);
        } catch (const Error& e) {
          note(e.what());
        }
      }
      report.sections.push_back(std::move(r));
    }
  } catch (const Error& e) {
    note(e.what());
  }
  if (seen.model && file.section_count() != fixed + static_cast<std::uint32_t>(seen.model->fingerprint.num_layers))
    note(fmt::format("{}: the preamble counts {} sections but a {}-layer model needs {} in format version {}; the "
                     "file is damaged",
                     file.where(), file.section_count(), seen.model->fingerprint.num_layers,
                     fixed + seen.model->fingerprint.num_layers, file.version()));
  if (seen.position) report.summary.push_back(fmt::format("position {}", *seen.position));
  if (seen.model && seen.layers == seen.model->fingerprint.num_layers)
    report.summary.push_back(
        fmt::format("state: {} bytes per sequence in memory now (fp32), {} at most once every "
                    "summary slot is in use; its tensors take {} bytes in this file",
                    seen.memory_bytes, seen.max_memory_bytes, seen.tensor_bytes));
  return report;
}

}  // namespace mhla
