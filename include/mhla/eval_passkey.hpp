#pragma once
// The pass-key test: a five-digit number hidden at a random depth in filler text of a given
// length and asked for at the end (the format of "Landmark Attention", Mohtashami and Jaggi,
// 2023, also used to train the bundled models: tools/train/passkey.py writes the same text).
// Documents come from a fixed seed, so every model and policy sees the same ones.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla::eval {

// Tokens the answer may take; a document of length N leaves them free (prompt <= N - 8).
inline constexpr int kPasskeyAnswerTokens = 8;

// The prompt text: the task, `before` filler sentences, the key sentence, `after` filler
// sentences and the question, which the key completes.
std::string passkey_text(std::string_view key, int before, int after);

struct PasskeyDocument {
  std::vector<int> prompt;  // BOS first
  std::string key;
  double depth = 0;  // where the key sits, 0 (start) to 1 (end)
};

// The longest document whose prompt fits in length - kPasskeyAnswerTokens tokens; throws
// mhla::Error when even one filler sentence does not fit.
PasskeyDocument make_passkey_document(const Tokenizer& tokenizer, int bos_id, long long length, std::string key,
                                      double depth);

// The key and depth of a trial: the same for a seed, length and trial on every platform.
std::pair<std::string, double> passkey_draw(std::uint64_t seed, long long length, int trial);

struct PasskeyOptions {
  std::vector<long long> lengths;
  std::vector<ContextPolicy> policies;
  int trials = 5;
  std::uint64_t seed = 1234;
  long long prefill_chunk = 256;
};

struct PasskeyTrial {
  long long length = 0;
  int trial = 0;
  ContextPolicy policy = ContextPolicy::strict;
  std::string key;
  double depth = 0;
  long long prompt_tokens = 0;
  bool refused = false;  // strict past the trained window: not run
  std::string answer;    // the generated text
  bool correct = false;  // the answer's first number is the key
  double prefill_seconds = 0;
};

// Every length x trial x policy, greedy; on_trial is called after each.
std::vector<PasskeyTrial> run_passkey(const Model& model, const Tokenizer& tokenizer, const PasskeyOptions& options,
                                      const std::function<void(const PasskeyTrial&)>& on_trial = {});

struct PasskeyCell {
  long long length = 0;
  ContextPolicy policy = ContextPolicy::strict;
  int trials = 0;
  int correct = 0;
  bool refused = false;
  long long prefill_tokens = 0;
  double prefill_seconds = 0;
};

// One cell per length and policy, in the order of the options.
std::vector<PasskeyCell> summarize_passkey(const PasskeyOptions& options, const std::vector<PasskeyTrial>& trials);

}  // namespace mhla::eval
