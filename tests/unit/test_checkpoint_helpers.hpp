#pragma once
// What the checkpoint tests share: a temporary folder, the tiny models, sessions that record
// every step's logits, and the framing of a state file (to damage it on purpose).
#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "mhla/checkpoint.hpp"
#include "mhla/session.hpp"

namespace mhla::test {

inline const std::string kDataDir = MHLA_TEST_DATA_DIR;

class ScratchDir {
public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "mhla-state-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

// A path in single quotes, for the shell.
inline std::string quoted(const std::string& path) { return fmt::format("'{}'", path); }

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Writes a fresh file (removed first: truncating one in place makes ext4 flush it on close).
inline void spill(const std::string& path, const std::string& bytes) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  std::ofstream(path, std::ios::binary) << bytes;
}

// Tokens and the logits that followed each of them, from one or more generate() calls.
struct Trace {
  std::vector<int> tokens;
  std::vector<std::vector<float>> logits;
};

inline void generate_into(Session& s, int count, Trace& trace) {
  StopCriteria stop;
  stop.max_tokens = count;
  stop.ignore_eos = true;
  s.generate(stop, [&](int id, std::string_view) {
    if (id >= 0) {
      trace.tokens.push_back(id);
      trace.logits.push_back(s.next_logits());
    }
    return true;
  });
}

inline SessionOptions session_options(ContextPolicy policy, float temperature, std::uint64_t seed) {
  SessionOptions o;
  o.policy = policy;
  o.prefill_chunk = 3;  // unaligned with the block size of 8
  o.sampling.temperature = temperature;
  o.sampling.top_k = 0;
  o.sampling.repeat_penalty = temperature == 0 ? 1.3f : 1.0f;  // greedy output that varies
  o.sampling.seed = seed;
  return o;
}

// A layer's tensors in file order (P, A, tail, recent summaries newest first), independent of
// where the ring of recent summaries starts.
inline std::vector<float> tensors_by_distance(const CausalState& s) {
  std::vector<int> slots = {CausalState::kPrefix, CausalState::kRunning, CausalState::kTail};
  for (int r = 1; r <= s.recent_count(); ++r) slots.push_back(s.recent_slot(r));
  std::vector<float> out;
  for (const int slot : slots)
    for (int h = 0; h < s.layout().kv_heads; ++h)
      out.insert(out.end(), s.matrix(slot, h), s.matrix(slot, h) + s.matrix_elems());
  return out;
}

struct CliRun {
  int status = -1;
  std::string out, err;
};

// Runs `mhla <args>` with stdout and stderr captured in files of `dir`.
inline CliRun run_cli(const ScratchDir& dir, const std::string& args) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd = "'" MHLA_CLI_PATH "' " + args + " >'" + out + "' 2>'" + err + "'";
  const int raw = std::system(cmd.c_str());
  CliRun r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// One section of a state file as laid out in bytes: [offset, offset + 12 + length + 8).
struct Frame {
  size_t offset = 0;
  size_t length = 0;  // payload bytes
  size_t end() const { return offset + 12 + length + 8; }
};

inline std::uint64_t load_u64(const std::string& b, size_t at) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(b[at + i])) << (8 * i);
  return v;
}

// The frames of a well-formed file (follows the lengths; stops where they leave the file).
inline std::vector<Frame> frames_of(const std::string& bytes) {
  std::vector<Frame> frames;
  size_t at = 28;
  while (at + 20 <= bytes.size()) {
    const std::uint64_t n = load_u64(bytes, at + 4);
    if (n > bytes.size() - at - 20) break;
    frames.push_back({at, static_cast<size_t>(n)});
    at = frames.back().end();
  }
  return frames;
}

}  // namespace mhla::test
