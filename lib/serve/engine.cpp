#include <filesystem>
#include <fmt/format.h>

#include "serve/engine_loop.hpp"

namespace mhla::serve {

namespace {
constexpr auto kHousekeepingEvery = std::chrono::seconds(1);
constexpr auto kIdlePoll = std::chrono::milliseconds(200);  // queued commands are retried this often when idle
}  // namespace

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

Engine::Loop::Loop(const Model& m, Backend& b, const Tokenizer* t, const ChatTemplate& c, const ServerConfig& cfg,
                   CheckpointStore& cp, Metrics& mt, Logger& lg)
    : model(m),
      backend(b),
      tokenizer(t),
      chat(c),
      config(cfg),
      checkpoints(cp),
      metrics(mt),
      log(lg),
      prefix(cfg.prefix_cache_memory, cfg.prefill_chunk, mt),
      store((std::filesystem::path(cfg.state_dir) / "sessions").string(), m, t, cfg.prefill_chunk) {
  metrics.state_memory_budget = static_cast<long long>(config.state_memory);
}

Engine::Engine(const Model& model, Backend& backend, const Tokenizer* tokenizer, const ChatTemplate& chat,
               const ServerConfig& config, CheckpointStore& checkpoints, Metrics& metrics, Logger& log)
    : loop_(std::make_unique<Loop>(model, backend, tokenizer, chat, config, checkpoints, metrics, log)) {}

Engine::~Engine() {
  if (loop_->thread.joinable()) {
    begin_drain();
    wait();
  }
}

void Engine::start() {
  Loop& l = *loop_;
  for (const auto& s : l.store.scan(l.log)) {
    ServerSession& session = l.sessions[s.id];
    session.id = s.id;
    session.owner = s.owner;
    session.created = s.created;
    session.last_used = s.last_used;
  }
  l.log.info("sessions_found", {{"on_disk", l.sessions.size()}});
  l.publish_gauges();
  l.thread = std::thread([&l] { l.run(); });
}

void Engine::submit(Command command) {
  {
    std::lock_guard lock(loop_->mutex);
    if (!loop_->drain.load()) {
      loop_->inbox.push_back(std::move(command));
      loop_->cv.notify_one();
      return;
    }
  }
  command.job->push(Failed{ApiError(503, "the server is shutting down; retry on another server or after its restart",
                                    {}, "shutting_down")});
}

void Engine::begin_drain() {
  std::lock_guard lock(loop_->mutex);
  loop_->drain.store(true);
  loop_->cv.notify_one();
}

bool Engine::draining() const { return loop_->drain.load(); }

void Engine::wait() {
  if (loop_->thread.joinable()) loop_->thread.join();
}

void Engine::Loop::run() {
  while (true) {
    intake();
    if (drain.load()) drain_step();
    process_queue();
    cancel_tasks();
    if (Clock::now() - last_housekeeping >= kHousekeepingEvery) housekeeping();
    if (has_work()) {
      step();
      retire_tasks();
    } else if (drain_started) {
      break;
    } else {
      wait_for_work();
    }
    publish_gauges();
  }
  // Drained: every session still in memory goes to disk, so a restart finds it.
  for (auto& [id, s] : sessions)
    if (s.body) evict(s);
  publish_gauges();
  log.info("engine_stopped", {{"sessions_on_disk", sessions.size()}});
}

void Engine::Loop::intake() {
  std::lock_guard lock(mutex);
  while (!inbox.empty()) {
    queue.push_back(std::move(inbox.front()));
    inbox.pop_front();
  }
}

void Engine::Loop::wait_for_work() {
  std::unique_lock lock(mutex);
  cv.wait_for(lock, queue.empty() ? kHousekeepingEvery : kIdlePoll, [&] { return !inbox.empty() || drain.load(); });
}

void Engine::Loop::drain_step() {
  if (!drain_started) {
    drain_started = true;
    drain_deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(config.drain_timeout_s));
    log.info("drain_started", {{"running", tasks.size()}, {"queued", queue.size()}});
    for (auto& c : queue)
      c.job->push(Failed{ApiError(503, "the server is shutting down; retry after its restart", {}, "shutting_down")});
    queue.clear();
  }
  if (Clock::now() >= drain_deadline)
    for (auto& t : tasks) t->job->cancel();
}

void Engine::Loop::process_queue() {
  bool memory_blocked = false;
  std::set<std::string> blocked;  // sessions with an earlier command still waiting: keep their order
  for (auto it = queue.begin(); it != queue.end();) {
    Command& c = *it;
    if (c.job->cancelled()) {
      ++metrics.cancelled;
      c.job->push(Done{{}, {{"cancelled", true}}});
      it = queue.erase(it);
      continue;
    }
    std::string session;
    if (const auto* w = std::get_if<WorkCommand>(&c.op)) session = w->session_id;
    if (const auto* s = std::get_if<SessionCommand>(&c.op)) session = s->session_id;
    if ((!session.empty() && blocked.count(session)) || memory_blocked) {
      ++it;
      continue;
    }
    Outcome outcome = Outcome::done;
    try {
      if (auto* w = std::get_if<WorkCommand>(&c.op))
        outcome = admit(c, *w);
      else
        outcome = session_op(c, std::get<SessionCommand>(c.op));
    } catch (const ApiError& e) {
      c.job->push(Failed{e});
    } catch (const std::exception& e) {
      log.error("command_failed", {{"reason", e.what()}});
      c.job->push(Failed{ApiError(500, fmt::format("internal error: {}", e.what()))});
    }
    if (outcome == Outcome::done) {
      it = queue.erase(it);
      continue;
    }
    if (outcome == Outcome::defer_memory && tasks.empty()) {
      // Nothing is running that could free memory, and nothing idle is left to evict.
      c.job->push(Failed{ApiError(503,
                                  fmt::format("not enough state memory for this request even with every idle session "
                                              "on disk ({} bytes in use of {}); raise --state-memory or lower "
                                              "--max-turns-kept",
                                              memory_in_use(), config.state_memory),
                                  {}, "state_memory_full")});
      it = queue.erase(it);
      continue;
    }
    if (outcome == Outcome::defer_slots && tasks.empty()) {
      c.job->push(Failed{ApiError(503,
                                  fmt::format("no free state slot on the GPU even with every idle session on disk "
                                              "({} held of {} per context policy); retry later",
                                              slots_in_use(), backend.slots()),
                                  {}, "device_slots_full")});
      it = queue.erase(it);
      continue;
    }
    if (outcome == Outcome::defer_memory || outcome == Outcome::defer_slots) memory_blocked = true;
    if (!session.empty()) blocked.insert(session);
    ++it;
  }
}

void Engine::Loop::housekeeping() {
  last_housekeeping = Clock::now();
  const auto idle = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(config.idle_timeout_s));
  const double now = unix_now();
  for (auto it = sessions.begin(); it != sessions.end();) {
    ServerSession& s = it->second;
    ++it;  // delete_session may erase s
    if (s.task) continue;
    if (now - s.last_used > config.session_ttl_s) {
      log.info("session_expired", {{"session", s.id}});
      delete_session(s);
    } else if (s.body && Clock::now() - s.touched > idle) {
      evict(s);
    }
  }
  checkpoints.sweep();
}

void Engine::Loop::publish_gauges() {
  long long resident = 0;
  for (const auto& [id, s] : sessions) resident += s.body ? 1 : 0;
  long long streams = 0;
  for (const auto& t : tasks)
    for (const auto& ch : t->choices) streams += ch.finished ? 0 : 1;
  metrics.sessions_resident = resident;
  metrics.sessions_on_disk = static_cast<long long>(sessions.size()) - resident;
  metrics.active_streams = streams;
  metrics.queued_requests = static_cast<long long>(queue.size());
  metrics.state_memory_bytes = static_cast<long long>(memory_in_use());
  if (backend.on_device()) metrics.device_slots_in_use = slots_in_use();
}

}  // namespace mhla::serve
