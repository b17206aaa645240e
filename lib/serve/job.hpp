#pragma once
// The channel between one request's HTTP connection and the engine: the engine pushes events
// (tokens, progress, the end), the connection takes them and may cancel the work. Every job
// the engine accepts ends with exactly one terminal event (Done or Failed).
#include <atomic>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "serve/api_error.hpp"

namespace mhla::serve {

struct TopLogprob {
  int id = 0;
  float logprob = 0;
};

// The log-probability of a sampled token under the model (log-softmax of the raw logits,
// before temperature and the other sampling filters), with the most likely alternatives.
struct TokenLogprob {
  float logprob = 0;
  std::vector<TopLogprob> top;
};

// Work has begun (after admission): how much of the prompt was already there.
struct Started {
  long long prompt_tokens = 0;  // the whole prompt, as OpenAI counts it
  long long cached_tokens = 0;  // taken from the prefix cache or the session's state
};

struct Progress {
  long long done = 0;   // prompt tokens prefilled so far in this request
  long long total = 0;  // prompt tokens this request prefills
};

struct Token {
  int choice = 0;
  int id = 0;
  std::string text;  // what may be shown now (stop strings withheld, UTF-8 whole)
  std::optional<TokenLogprob> logprob;
};

struct Finished {
  int choice = 0;
  std::string reason;  // stop, length or cancelled
  std::string text;    // withheld text released at the end
};

struct Usage {
  long long prompt_tokens = 0;
  long long cached_tokens = 0;
  long long completion_tokens = 0;
};

struct Done {
  Usage usage;
  nlohmann::json info;  // session operations: their result object
};

struct Failed {
  ApiError error;
};

using Event = std::variant<Started, Progress, Token, Finished, Done, Failed>;
inline bool is_terminal(const Event& e) {
  return std::holds_alternative<Done>(e) || std::holds_alternative<Failed>(e);
}

class Job {
public:
  explicit Job(std::string owner) : owner_(std::move(owner)) {}

  const std::string& owner() const { return owner_; }

  // Engine side.
  void push(Event event);
  bool cancelled() const { return cancelled_.load(); }

  // Connection side. The notifier is called (on the engine's thread) after each push.
  void set_notifier(std::function<void()> notify);
  std::vector<Event> take();
  void cancel() { cancelled_.store(true); }

private:
  std::string owner_;
  std::mutex mutex_;
  std::deque<Event> events_;
  std::function<void()> notify_;
  std::atomic<bool> cancelled_{false};
};

}  // namespace mhla::serve
