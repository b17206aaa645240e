#pragma once
// Session checkpoints: a session saved to a file, verified and resumed exactly, or branched.
//
// State file layout, format version 2 (docs/state-format.md gives the reasons and the sizes).
// Every integer and float is little-endian, whatever the host; i32/i64 are two's complement.
//   preamble, 28 bytes:
//     magic "MHLASTAT" (8 bytes), u32 format version, u32 byte-order mark 0x01020304 (on disk
//     04 03 02 01), u32 section count, u64 XXH3-64 of the preceding 20 bytes
//   sections, in this order and nothing after the last, each framed as
//     4-byte ASCII tag, u64 payload length n, n payload bytes, u64 XXH3-64 of tag+length+payload
//   (version 1 is the same without TRNS; a file is written as version 1 when it has no transcript)
//   MODL  the model fingerprint (ModelFingerprint):
//         u32 n + n bytes model directory (informational), u64 weights hash,
//         i32 hidden_size, num_layers, num_heads, num_kv_heads, head_k_dim, head_v_dim,
//             intermediate_size, vocab_size, mixing_blocks,
//         u8 feature map (0 relu, 1 elu1, 2 identity, 3 relu_eps), u8 tie_word_embeddings,
//         u8 use_output_gate, f32 norm_eps, f64 rope_theta,
//         u32 tensor count, per tensor: u32 n + n bytes name, u32 rank, i64 x rank dims
//   OPTS  the engine options that change the math: i32 block size, u8 context policy
//         (0 strict, 1 slide, 2 slide_mean), u8 state precision (0 fp32), u8 summary storage
//         (0 fp32, 1 bf16), u8 normalized, i64 prefill chunk (exact resume needs the same)
//   SEQN  i64 position, u64 n + i32 x n token history, u64 m + f32 x m next logits (m is the
//         vocabulary size, or 0 when nothing was consumed yet)
//   SAMP  f32 temperature, i32 top_k, f32 top_p, f32 min_p, f32 repeat_penalty,
//         i32 repeat_window, u64 seed, u32 n + n bytes RNG state (Sampler::save_rng)
//   TRNS  the transcript: u32 entries, per entry u32 n + n bytes role (1 to 32 printable ASCII
//         characters), u32 n + n bytes content (the text as the client gave or received it)
//   LAYR  one per layer, in order: u32 layer index, i64 tail blocks, u32 recent summaries r;
//         then the slots P, A, tail (fp32) and the r recent summaries newest first (in the
//         summary storage precision); per slot, per kv head: dk x dv row-major, then the dk
//         normalizer when normalized
// Reading checks every field and every length against the file size before allocating; any
// problem throws mhla::Error saying what is wrong and what to do, and no session is touched.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/sampling.hpp"
#include "mhla/session.hpp"

namespace mhla {

inline constexpr std::uint32_t kStateFormatVersion = 2;  // the newest this engine reads and writes

// How the completed block summaries are stored. bf16 halves their bytes; a resume is then
// exact with respect to the stored (rounded) values. P, A and the tail stay fp32.
enum class SummaryStorage { f32, bf16 };
std::string_view to_string(SummaryStorage s);
SummaryStorage parse_summary_storage(std::string_view name);  // "f32" or "bf16"

// One entry of a conversation's transcript: a message ("system", "user", "assistant") or raw
// text ("text"). The engine does not read it; clients keep it with the state to show it again.
struct TranscriptEntry {
  std::string role;
  std::string content;
  bool operator==(const TranscriptEntry&) const = default;
};

// Everything a state file holds, detached from any session. Restoring one snapshot into many
// sessions branches from the same point without prefilling again.
struct SessionSnapshot {
  ModelFingerprint model;
  std::string model_directory;  // where the model was loaded from, for messages
  int block_size = 0;
  SummaryStorage summaries = SummaryStorage::f32;
  long long prefill_chunk = 0;
  SamplingParams sampling;
  std::string rng;   // Sampler::save_rng
  ModelState state;  // its context policy included
  std::vector<int> history;
  std::vector<float> next_logits;
  std::vector<TranscriptEntry> transcript;  // empty for sessions saved without one
};

// A copy of the session's contents; with bf16 the recent summaries are rounded to bf16.
SessionSnapshot snapshot(const Session& session, SummaryStorage summaries = SummaryStorage::f32);

// What a resume may change. Only strict -> slide or slide_mean is allowed for the policy
// (identical inside the trained window); the prefill chunk changes later prefills only.
struct ResumeOptions {
  std::optional<ContextPolicy> policy;
  std::optional<long long> prefill_chunk;
  DeviceModel* device = nullptr;  // resume on this device model (SessionOptions::device)
};

// A new session holding the snapshot: state, history, next logits, sampler settings and RNG.
// Throws mhla::Error when the snapshot was made with another model or other math options.
Session resume(const SessionSnapshot& snapshot, const Model& model, const Tokenizer* tokenizer,
               const ResumeOptions& options = {});

// Writes atomically: a temporary file beside `path`, flushed and fsynced, then renamed.
// Throws mhla::Error for a transcript role the format cannot hold.
void write_state_file(const std::string& path, const SessionSnapshot& snapshot);
// Reads and verifies the whole file against `model` (checksums, model, options, every count).
SessionSnapshot read_state_file(const std::string& path, const Model& model);

void save_session(const std::string& path, const Session& session, SummaryStorage summaries = SummaryStorage::f32);

// A read-only look at a state file, without a model: each section and whether its checksum
// holds, plus what the intact sections say.
struct StateSectionReport {
  std::string tag;
  std::uint64_t offset = 0;  // of the section's tag in the file
  std::uint64_t bytes = 0;   // framing included
  bool checksum_ok = false;
  std::vector<std::string> details;  // decoded contents, one line each (intact sections only)
};

struct StateFileReport {
  std::uint64_t file_bytes = 0;
  std::uint32_t version = 0;
  std::vector<StateSectionReport> sections;
  std::vector<std::string> summary;  // position, state sizes (when the sections allow)
  std::string problem;               // empty when the file is whole and every checksum holds
  bool ok() const { return problem.empty(); }
};

// Throws mhla::Error only when the file cannot be opened or is not a state file at all
// (wrong magic, unreadable preamble); other damage is reported in `problem`.
StateFileReport inspect_state_file(const std::string& path);

}  // namespace mhla
