#pragma once
// Choosing the next token from logits, and deciding when generation ends.
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mhla {

struct SamplingParams {
  float temperature = 1.0f;     // 0 = greedy
  int top_k = 0;                // 0 = off
  float top_p = 1.0f;           // 1 = off
  float min_p = 0.0f;           // 0 = off
  float repeat_penalty = 1.0f;  // 1 = off
  int repeat_window = 64;       // how many recent history tokens are penalized; 0 = all
  std::uint64_t seed = 0;

  void validate() const;  // throws mhla::Error naming the bad field
};

// Draws tokens with its own random generator, so a checkpoint can save and restore the
// exact point in the random sequence (save_rng / load_rng).
//
// Per call, in this order: repetition penalty (llama.cpp convention: a positive logit of a
// token seen in the window is divided by the penalty, a negative one multiplied); greedy
// when temperature == 0 (argmax, lowest id on ties); otherwise temperature, top-k, softmax,
// top-p (smallest set, by probability then id, whose mass reaches top_p), min-p (drop
// tokens below min_p times the top probability), renormalization and one inverse-CDF draw
// over the kept tokens in ascending id order. -inf logits are never chosen.
class Sampler {
public:
  explicit Sampler(SamplingParams params);

  // Throws mhla::Error when the logits are empty, hold NaN or +inf, are all -inf, or when
  // a history id is outside the vocabulary.
  int sample(std::span<const float> logits, std::span<const int> history = {});

  // What sample() takes from the sampler besides the logits, for sampling them elsewhere (on a
  // device) by the same rules: the distinct history ids the repetition penalty applies to, in
  // ascending order, and the uniform number of the draw (0 when greedy, which draws none).
  // Advances the generator as sample() does. Throws mhla::Error when a history id is outside
  // a vocabulary of `vocab` tokens.
  struct Draw {
    std::vector<int> penalized;
    double uniform = 0.0;
  };
  Draw draw(std::span<const int> history, int vocab);

  const SamplingParams& params() const { return params_; }
  void set_params(SamplingParams params);  // keeps the random generator where it is
  void reseed(std::uint64_t seed);         // restarts the random sequence from seed

  // The generator state as text; load_rng continues exactly where save_rng was taken.
  std::string save_rng() const;
  void load_rng(const std::string& state);  // throws mhla::Error on malformed input

private:
  double uniform();  // in [0, 1), the same on every platform

  SamplingParams params_;
  std::mt19937_64 rng_;
};

// When generation ends. stop_ids and eos_id end it with reason "stop" (their own text is
// not shown); so does the first occurrence of a stop string (neither it nor anything after
// it is shown); max_tokens ends it with reason "length".
struct StopCriteria {
  std::vector<int> stop_ids;
  std::vector<std::string> stop_strings;
  int max_tokens = 0;  // 0 = no limit
  bool ignore_eos = false;
  int eos_id = -1;     // -1 = the vocabulary has none

  void validate() const;  // throws mhla::Error on an empty stop string or max_tokens < 0
};

enum class StopReason { none, stop, length };
std::string_view to_string(StopReason reason);  // "", "stop", "length"

struct StopStep {
  std::string text;                      // text that may be shown now
  StopReason reason = StopReason::none;  // none: keep generating
};

// Fed every generated token with its decoded text piece (for instance from TextStream), it
// says what may be shown and whether to stop. Text that could be the beginning of a stop
// string is withheld until the following pieces settle it, so a stop string is never shown
// even when it arrives split over several pieces; once generation stops, everything
// withheld that precedes the stop string is released in that step's text.
class StopChecker {
public:
  explicit StopChecker(StopCriteria criteria);

  // Throws mhla::Error when called after a step that stopped.
  StopStep push(int id, std::string_view piece);

  // For generation that ends for another reason (cancelled, context full): the withheld text.
  std::string finish();

  StopReason reason() const { return reason_; }
  int generated() const { return generated_; }

private:
  StopStep stop(StopReason reason, std::size_t keep);
  std::size_t held_suffix() const;  // bytes at the end of pending_ that may start a stop string

  StopCriteria criteria_;
  std::string pending_;  // received but not yet released
  int generated_ = 0;
  StopReason reason_ = StopReason::none;
};

}  // namespace mhla
