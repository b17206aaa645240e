#pragma once
// The engine: one thread that owns every sequence's state and runs the model. Each step it
// makes one batched forward pass over all active work: the next token of every generating
// stream, then whole prefill pieces of pending prompts up to the step's token budget
// (continuous batching), so a long prefill delays other streams by at most one step.
//
// Connections hand it commands with a Job; it answers through the Job's events.
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/sampling.hpp"
#include "mhla/tokenizer.hpp"
#include "serve/chat_template.hpp"
#include "serve/checkpoint_store.hpp"
#include "serve/config.hpp"
#include "serve/job.hpp"
#include "serve/log.hpp"
#include "serve/metrics.hpp"

namespace mhla::serve {

using Clock = std::chrono::steady_clock;

struct GenerationSpec {
  SamplingParams sampling;
  bool seed_given = false;  // else a session's sampler continues where it was
  StopCriteria stop;        // max_tokens, stop strings, eos
  int n = 1;
  int top_logprobs = -1;    // -1: no log-probabilities; else that many alternatives (0 or more)
  bool chat = false;        // the reply is an assistant message (one leading space dropped)
};

// Work that runs through the model. Input is given as tokens (already encoded; a session at
// position 0 gets BOS first when add_bos), or as chat messages rendered by the engine with
// the session's transcript in view.
struct WorkCommand {
  enum class Kind {
    completion,      // a stateless prompt (tokens), then generation
    create_session,  // a new session, prefilled with tokens (may be empty)
    append,          // session: prefill input, no generation
    generate,        // session: prefill input (may be empty), then generate
    regenerate,      // session: back to the last turn's start, its input again, generate
  };
  Kind kind = Kind::completion;
  std::string session_id;
  std::vector<int> tokens;
  bool add_bos = false;
  std::string text;                   // what tokens are, for the transcript (role "text")
  bool has_messages = false;
  std::vector<ChatMessage> messages;  // chat input: the whole conversation or just new messages
  std::optional<ContextPolicy> policy;
  std::optional<GenerationSpec> gen;
  bool progress = false;              // send Progress events while prefilling
};

struct SessionCommand {
  enum class Kind { get, fork, remove, undo, checkpoint, restore, cancel, list };
  Kind kind = Kind::get;
  std::string session_id;
  std::string checkpoint_id;
};

struct Command {
  std::shared_ptr<Job> job;
  std::variant<WorkCommand, SessionCommand> op;
  Clock::time_point arrived = Clock::now();
};

class Backend;

class Engine {
public:
  // The backend runs the model (the CPU, or the GPU's state slots) and must outlive the engine.
  Engine(const Model& model, Backend& backend, const Tokenizer* tokenizer, const ChatTemplate& chat,
         const ServerConfig& config, CheckpointStore& checkpoints, Metrics& metrics, Logger& log);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Finds the sessions left on disk by an earlier run, then starts the loop thread.
  void start();
  // Thread-safe; never waits for the loop. While draining, work is refused (Failed, 503).
  void submit(Command command);
  // Stops taking work, lets running requests finish (up to --drain-timeout; then they end
  // cancelled), writes every session in memory to disk and stops the loop.
  void begin_drain();
  bool draining() const;
  // Blocks until the loop has stopped (after begin_drain).
  void wait();

  struct Loop;  // the loop's state; defined inside lib/serve

private:
  std::unique_ptr<Loop> loop_;
};

}  // namespace mhla::serve
