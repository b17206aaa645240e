// Pass-key documents and their evaluation.
#include "mhla/eval_passkey.hpp"

#include <chrono>
#include <fmt/format.h>
#include <random>

#include "mhla/error.hpp"
#include "mhla/session.hpp"

namespace mhla::eval {

namespace {

constexpr std::string_view kTask =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.";
constexpr std::string_view kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
constexpr std::string_view kQuestion = "What is the pass key? The pass key is";

std::string filler(int units) {
  std::string out;
  for (int i = 0; i < units; ++i) {
    if (i) out.push_back(' ');
    out += kFiller;
  }
  return out;
}

std::string first_number(std::string_view text) {
  const size_t start = text.find_first_of("0123456789");
  if (start == std::string_view::npos) return {};
  const size_t end = text.find_first_not_of("0123456789", start);
  return std::string(text.substr(start, end == std::string_view::npos ? end : end - start));
}

}  // namespace

std::string passkey_text(std::string_view key, int before, int after) {
  return fmt::format("{}\n{}\nThe pass key is {}. Remember it. {} is the pass key.\n{}\n{}", kTask, filler(before), key,
                     key, filler(after), kQuestion);
}

PasskeyDocument make_passkey_document(const Tokenizer& tokenizer, int bos_id, long long length, std::string key,
                                      double depth) {
  const long long budget = length - kPasskeyAnswerTokens;
  const auto tokens_of = [&](int units) {
    const int before = static_cast<int>(units * depth);
    return tokenizer.encode(passkey_text(key, before, units - before), false);
  };
  const auto unit = static_cast<long long>(tokenizer.encode(std::string(" ") + std::string(kFiller), false).size());
  const auto overhead = static_cast<long long>(tokens_of(0).size()) + 1;  // + BOS
  int units = static_cast<int>(std::max(0LL, (budget - overhead) / unit));
  auto ids = tokens_of(units);
  while (units > 0 && static_cast<long long>(ids.size()) + 1 > budget) {
    units -= static_cast<int>(std::max(1LL, (static_cast<long long>(ids.size()) + 1 - budget + unit - 1) / unit));
    units = std::max(units, 0);
    ids = tokens_of(units);
  }
  if (units == 0)
    throw Error(fmt::format("a pass-key document of {} tokens is too short for this tokenizer: use at least {}", length,
                            overhead + unit + kPasskeyAnswerTokens));
  PasskeyDocument doc{{bos_id}, std::move(key), depth};
  doc.prompt.insert(doc.prompt.end(), ids.begin(), ids.end());
  return doc;
}

std::pair<std::string, double> passkey_draw(std::uint64_t seed, long long length, int trial) {
  // mt19937_64's output is fixed by the standard; the distributions are done by hand because
  // the library's are not.
  std::mt19937_64 rng(seed * 1000003ULL + static_cast<std::uint64_t>(length) * 7919ULL +
                      static_cast<std::uint64_t>(trial));
  const std::uint64_t key = 10000 + rng() % 90000;
  const double depth = static_cast<double>(rng() >> 11) * 0x1.0p-53;
  return {std::to_string(key), depth};
}

std::vector<PasskeyTrial> run_passkey(const Model& model, const Tokenizer& tokenizer, const PasskeyOptions& options,
                                      const std::function<void(const PasskeyTrial&)>& on_trial) {
  if (options.lengths.empty() || options.policies.empty() || options.trials <= 0)
    throw Error("the pass-key test needs at least one length, one policy and one trial");
  std::vector<PasskeyTrial> out;
  for (const long long length : options.lengths) {
    for (int t = 0; t < options.trials; ++t) {
      auto [key, depth] = passkey_draw(options.seed, length, t);
      const PasskeyDocument doc = make_passkey_document(tokenizer, model.config().bos_token_id, length, key, depth);
      for (const ContextPolicy policy : options.policies) {
        PasskeyTrial r;
        r.length = length;
        r.trial = t;
        r.policy = policy;
        r.key = doc.key;
        r.depth = doc.depth;
        r.prompt_tokens = static_cast<long long>(doc.prompt.size());
        r.refused = policy == ContextPolicy::strict && length > model.trained_window();
        if (!r.refused) {
          SessionOptions so;
          so.policy = policy;
          so.prefill_chunk = options.prefill_chunk;
          so.sampling.temperature = 0;
          Session session(model, &tokenizer, so);
          session.append(doc.prompt);
          StopCriteria stop;
          stop.max_tokens = kPasskeyAnswerTokens;
          stop.eos_id = model.config().eos_token_id;
          r.answer = session.generate(stop).text;
          r.correct = first_number(r.answer) == r.key;
          r.prefill_seconds = session.stats().prefill_seconds;
        }
        if (on_trial) on_trial(r);
        out.push_back(std::move(r));
      }
    }
  }
  return out;
}

std::vector<PasskeyCell> summarize_passkey(const PasskeyOptions& options, const std::vector<PasskeyTrial>& trials) {
  std::vector<PasskeyCell> cells;
  for (const long long length : options.lengths) {
    for (const ContextPolicy policy : options.policies) {
      PasskeyCell c;
      c.length = length;
      c.policy = policy;
      for (const auto& t : trials) {
        if (t.length != length || t.policy != policy) continue;
        ++c.trials;
        c.refused = t.refused;
        c.correct += t.correct ? 1 : 0;
        c.prefill_tokens += t.refused ? 0 : t.prompt_tokens;
        c.prefill_seconds += t.prefill_seconds;
      }
      cells.push_back(c);
    }
  }
  return cells;
}

}  // namespace mhla::eval
