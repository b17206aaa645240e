#pragma once
// The engine loop's state and its parts (engine_*.cpp). Everything here is touched by the
// loop thread only, except the inbox and the drain flag.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "mhla/text_stream.hpp"
#include "serve/backend.hpp"
#include "serve/engine.hpp"
#include "serve/prefix_cache.hpp"
#include "serve/session_body.hpp"
#include "serve/session_store.hpp"

namespace mhla::serve {

struct Task;

struct ServerSession {
  std::string id;
  std::string owner;
  double created = 0;    // unix seconds
  double last_used = 0;  // unix seconds
  Clock::time_point touched = Clock::now();  // least recently used goes to disk first
  std::unique_ptr<SessionBody> body;         // null while on disk
  Task* task = nullptr;                      // the work running on it
};

// One continuation being generated (a request with n > 1 has n of them, forked after the
// prompt's prefill).
struct Choice {
  int index = 0;
  Sequence* seq = nullptr;
  std::unique_ptr<Sequence> own;
  std::optional<StopChecker> checker;
  std::optional<TextStream> text;
  int feed = -1;          // sampled and sent, not yet run through the model
  DeviceSampling sampled;  // the next token when the step running `feed` sampled it on the GPU
  bool finished = false;
  std::string shown;      // the text sent
  Clock::time_point last_token;
  bool any_token = false;
};

struct Task {
  std::shared_ptr<Job> job;
  WorkCommand cmd;
  Clock::time_point arrived;
  ServerSession* session = nullptr;
  std::unique_ptr<Sequence> own;    // a stateless request's sequence
  Sequence* seq = nullptr;          // where the input is prefilled
  ContextPolicy policy = ContextPolicy::strict;
  std::vector<int> input;           // tokens to prefill; `fed` of them are done
  std::size_t fed = 0;
  std::size_t prefill_from = 0;     // where this request's prefill started (after a cache hit)
  std::vector<std::size_t> captures;  // offsets where the prefix cache takes a copy
  Usage usage;
  std::optional<Sequence> rollback;   // the session before this request, when no turn keeps it
  bool opened_turn = false;
  std::size_t joined_tokens = 0;    // input added to a turn that had not generated yet
  std::size_t joined_entries = 0;
  std::vector<ChatMessage> transcript_add;  // recorded once the input is in
  std::vector<Choice> choices;
  std::size_t charge = 0;           // state memory held by own sequences
  bool first_token = false;
  bool aborted = false;             // ended early; retire_tasks drops it

  bool prefilling() const { return !aborted && fed < input.size(); }
};

// State slots a command needs in the device model of a policy (none on the CPU).
struct SlotNeed {
  ContextPolicy policy = ContextPolicy::strict;
  int count = 0;
};

struct Engine::Loop {
  Loop(const Model& m, Backend& b, const Tokenizer* t, const ChatTemplate& c, const ServerConfig& cfg,
       CheckpointStore& cp, Metrics& mt, Logger& lg);

  // engine.cpp: the loop itself
  void run();
  void intake();
  void process_queue();
  void wait_for_work();
  void drain_step();
  void housekeeping();
  void publish_gauges();

  // engine_admit.cpp: commands that start model work
  enum class Outcome { done, defer_busy, defer_memory, defer_slots };
  Outcome admit(Command& c, WorkCommand& w);
  Outcome admit_stateless(Command& c, WorkCommand& w);
  Outcome admit_create(Command& c, WorkCommand& w);
  Outcome admit_session(Command& c, WorkCommand& w);
  std::vector<int> session_input(ServerSession& s, const WorkCommand& w, std::vector<ChatMessage>& entries);
  void check_prompt(ContextPolicy policy, long long position, std::size_t tokens) const;
  void use_prefix_cache(Task& t);
  Task& add_task(Command& c, WorkCommand& w);

  // engine_step.cpp: one batched forward pass and what follows it
  bool has_work() const { return !tasks.empty(); }
  void step();
  void prefill_done(Task& t);
  void start_choices(Task& t);
  void sample_next(Task& t, Choice& ch);
  void finish_choice(Task& t, Choice& ch, const std::string& reason);
  void cancel_tasks();
  void retire_tasks();
  void complete(Task& t);
  void abort(Task& t, const std::optional<ApiError>& error);
  // Runs f; an exception from it (a sampler refusing NaN logits, say) ends the task with a 500.
  template <class F> void guarded(Task& t, F&& f);

  // engine_sessions.cpp: session commands, memory, disk
  Outcome session_op(Command& c, SessionCommand& op);
  ServerSession& find_session(const std::string& id, const std::string& owner);
  ServerSession& new_session(const std::string& owner, std::unique_ptr<SessionBody> body);
  Outcome ensure_resident(ServerSession& s);
  // Room for `need` more bytes of state memory and the slots asked for, sending idle sessions
  // (least recently used first, never `keep`) to disk; defer_memory or defer_slots when that
  // is not enough. A need of more slots than the device model has is a 400.
  Outcome make_room(std::size_t need, const ServerSession* keep = nullptr, SlotNeed slots = {});
  // `count` slots of the policy's device model (making that model if needed); none on the CPU.
  SlotNeed device_slots(ContextPolicy policy, int count);
  // Slots of the policy's device model held or promised (forks a request makes once its
  // prompt is in); all policies' when none is given.
  int slots_in_use(std::optional<ContextPolicy> policy = std::nullopt) const;
  bool evict(ServerSession& s);
  void delete_session(ServerSession& s);
  std::size_t memory_in_use() const;
  void check_session_limit() const;
  nlohmann::json session_info(const ServerSession& s) const;

  const Model& model;
  Backend& backend;
  const Tokenizer* tokenizer;
  const ChatTemplate& chat;
  const ServerConfig& config;
  CheckpointStore& checkpoints;
  Metrics& metrics;
  Logger& log;
  PrefixCache prefix;
  SessionStore store;

  std::thread thread;
  std::mutex mutex;                 // guards inbox, stopped
  std::condition_variable cv;
  std::deque<Command> inbox;
  std::atomic<bool> drain{false};
  bool stopped = false;

  std::deque<Command> queue;        // commands waiting for memory or a busy session
  std::map<std::string, ServerSession> sessions;
  std::list<std::unique_ptr<Task>> tasks;  // in arrival order: prefill pieces go first-come first-served
  bool drain_started = false;
  Clock::time_point drain_deadline;
  Clock::time_point last_housekeeping = Clock::now();
};

double unix_now();

template <class F> void Engine::Loop::guarded(Task& t, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    log.error("request_failed", {{"reason", e.what()}});
    abort(t, ApiError(500, std::string("internal error: ") + e.what()));
  }
}

}  // namespace mhla::serve
