#pragma once
// The pieces of the state file format (layout in include/mhla/checkpoint.hpp): constants, and
// the encoding and decoding of each section's payload. Decoders check every field and count
// and call damaged() on anything a correct writer cannot produce.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/checkpoint.hpp"
#include "state/byte_io.hpp"

namespace mhla::state_format {

inline constexpr std::string_view kMagic = "MHLASTAT";
inline constexpr std::uint32_t kByteOrderMark = 0x01020304;
inline constexpr size_t kPreambleBytes = 28;
inline constexpr size_t kSectionHeaderBytes = 12;  // tag, u64 payload length
inline constexpr size_t kChecksumBytes = 8;
inline constexpr std::string_view kModelTag = "MODL";
inline constexpr std::string_view kOptionsTag = "OPTS";
inline constexpr std::string_view kSequenceTag = "SEQN";
inline constexpr std::string_view kSamplerTag = "SAMP";
inline constexpr std::string_view kLayerTag = "LAYR";
inline constexpr std::string_view kTranscriptTag = "TRNS";

// The sections before the layers: MODL, OPTS, SEQN, SAMP, and TRNS from version 2 on.
std::uint32_t fixed_sections(std::uint32_t version);
// The oldest version that holds these contents, so files without a transcript stay readable
// by engines that know version 1 only.
std::uint32_t version_for(const std::vector<TranscriptEntry>& transcript);

// Throws mhla::Error: "<where>: <what>; the file is damaged ...", with what to do about it.
[[noreturn]] void damaged(std::string_view where, std::string_view what);

struct ModelSection {
  ModelFingerprint fingerprint;
  std::string directory;
};

struct OptionsSection {
  int block_size = 0;
  ContextPolicy policy = ContextPolicy::strict;
  SummaryStorage summaries = SummaryStorage::f32;
  bool normalized = false;
  long long prefill_chunk = 0;
};

struct SequenceSection {
  long long position = 0;
  std::vector<int> history;
  std::vector<float> next_logits;
};

struct SamplerSection {
  SamplingParams params;
  std::string rng;
};

std::string encode_model(const ModelFingerprint& f, std::string_view directory);
ModelSection decode_model(state_io::ByteReader& in);

std::string encode_options(const OptionsSection& o);
OptionsSection decode_options(state_io::ByteReader& in);

std::string encode_sequence(long long position, const std::vector<int>& history, const std::vector<float>& logits);
// Checks history length = position, ids within the vocabulary, logits count = vocab (0 at 0).
SequenceSection decode_sequence(state_io::ByteReader& in, int vocab_size);

std::string encode_sampler(const SamplingParams& p, std::string_view rng);
// Checks the settings and that the RNG state loads.
SamplerSection decode_sampler(state_io::ByteReader& in);

// Throws mhla::Error for a role the format cannot hold (1 to 32 printable ASCII characters).
std::string encode_transcript(const std::vector<TranscriptEntry>& transcript);
std::vector<TranscriptEntry> decode_transcript(state_io::ByteReader& in);

std::string encode_layer(int index, const CausalState& s, SummaryStorage summaries);
// Fills `state` (shaped for the model: layout, block size, L, normalization) through reset_to;
// counts that cannot describe a state at `position` are reported as damage.
void decode_layer(state_io::ByteReader& in, int index, long long position, SummaryStorage summaries,
                  CausalState& state);

// The bytes the tensors of a layer section take in the file.
std::uint64_t layer_tensor_bytes(const CausalState& s, SummaryStorage summaries);

}  // namespace mhla::state_format
