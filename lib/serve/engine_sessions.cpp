// Session commands, and where sessions live: in memory while there is room, on disk when
// not (least recently used first), back in memory on their next use.
#include <algorithm>
#include <fmt/format.h>

#include "serve/engine_loop.hpp"
#include "serve/ids.hpp"

namespace mhla::serve {

ServerSession& Engine::Loop::find_session(const std::string& id, const std::string& owner) {
  const auto it = sessions.find(id);
  // Another key's session is reported exactly like one that does not exist.
  if (it == sessions.end() || it->second.owner != owner)
    throw not_found(fmt::format("no session {}; it may have been deleted or expired", id));
  return it->second;
}

void Engine::Loop::check_session_limit() const {
  if (sessions.size() >= static_cast<std::size_t>(config.max_sessions))
    throw ApiError(429,
                   fmt::format("the server holds {} sessions, its limit (--max-sessions); delete sessions you no "
                               "longer need",
                               sessions.size()),
                   {}, "too_many_sessions");
}

ServerSession& Engine::Loop::new_session(const std::string& owner, std::unique_ptr<SessionBody> body) {
  const std::string id = random_id("sess");
  ServerSession& s = sessions[id];
  s.id = id;
  s.owner = owner;
  s.created = s.last_used = unix_now();
  s.touched = Clock::now();
  s.body = std::move(body);
  log.info("session_created", {{"session", id}});
  return s;
}

std::size_t Engine::Loop::memory_in_use() const {
  std::size_t bytes = 0;
  for (const auto& [id, s] : sessions)
    if (s.body) bytes += s.body->charge(model);
  for (const auto& t : tasks) {
    bytes += t->charge;
    if (t->rollback) bytes += t->rollback->state.byte_size();
  }
  return bytes;
}

SlotNeed Engine::Loop::device_slots(ContextPolicy policy, int count) {
  if (!backend.on_device()) return {};
  backend.prepare(policy);
  return {policy, count};
}

int Engine::Loop::slots_in_use(std::optional<ContextPolicy> policy) const {
  const auto held = [&](const Sequence* s) { return s && s->slot && (!policy || s->state.policy == *policy) ? 1 : 0; };
  int n = 0;
  for (const auto& [id, s] : sessions)
    if (s.body) n += held(&s.body->seq);
  for (const auto& t : tasks) {
    n += held(t->own.get());
    for (const auto& ch : t->choices) n += held(ch.own.get());
    const int rollback = t->rollback ? held(&*t->rollback) : 0;
    const bool forks_to_come =
        backend.on_device() && t->cmd.gen && t->choices.empty() && !t->aborted && (!policy || t->policy == *policy);
    // The rollback copy is dropped once the input is in, before the forks are made.
    n += std::max(rollback, forks_to_come ? t->cmd.gen->n - 1 : 0);
  }
  return n;
}

Engine::Loop::Outcome Engine::Loop::make_room(std::size_t need, const ServerSession* keep, SlotNeed slots) {
  if (slots.count > 0) {
    const bool kept = keep && keep->body && keep->body->seq.slot && keep->body->seq.state.policy == slots.policy;
    if (slots.count + (kept ? 1 : 0) > backend.slots())
      throw ApiError(400,
                     fmt::format("this request needs {} state slots on the GPU at once (one per sequence: the "
                                 "session, each of n choices) but the server has {} per context policy (they follow "
                                 "--state-memory and --max-sessions)",
                                 slots.count + (kept ? 1 : 0), backend.slots()));
  }
  while (true) {
    const bool memory_short = memory_in_use() + need > config.state_memory;
    const bool slots_short = slots.count > 0 && backend.slots() - slots_in_use(slots.policy) < slots.count;
    if (!memory_short && !slots_short) return Outcome::done;
    // Short of slots only: a session of another policy's model frees none.
    const auto frees = [&](const ServerSession& s) { return memory_short || s.body->seq.state.policy == slots.policy; };
    ServerSession* victim = nullptr;
    for (auto& [id, s] : sessions)
      if (s.body && !s.task && &s != keep && frees(s) && (!victim || s.touched < victim->touched)) victim = &s;
    if (!victim || !evict(*victim)) return memory_short ? Outcome::defer_memory : Outcome::defer_slots;
  }
}

bool Engine::Loop::evict(ServerSession& s) {
  try {
    store.save({s.id, s.owner, s.created, s.last_used}, *s.body);
  } catch (const std::exception& e) {
    // Never drop a session that is not safely on disk.
    log.error("session_evict_failed", {{"session", s.id}, {"reason", e.what()}});
    return false;
  }
  s.body.reset();
  ++metrics.session_evictions;
  log.info("session_evicted", {{"session", s.id}});
  return true;
}

Engine::Loop::Outcome Engine::Loop::ensure_resident(ServerSession& s) {
  if (s.body) return Outcome::done;
  if (const Outcome o = make_room(model.max_state_bytes(), &s); o != Outcome::done) return o;
  std::unique_ptr<SessionBody> body;
  try {
    body = std::make_unique<SessionBody>(store.load(s.id));
  } catch (const std::exception& e) {
    log.error("session_restore_failed", {{"session", s.id}, {"reason", e.what()}});
    throw ApiError(500, fmt::format("session {} could not be read back from disk: {}", s.id, e.what()));
  }
  if (backend.on_device()) {
    const SlotNeed slot = device_slots(body->seq.state.policy, 1);
    if (const Outcome o = make_room(0, &s, slot); o != Outcome::done) return o;
    backend.place(body->seq);
  }
  s.body = std::move(body);
  // One place at a time: once in memory, the copy on disk would go stale.
  store.remove(s.id);
  s.touched = Clock::now();
  ++metrics.session_restores;
  log.info("session_restored", {{"session", s.id}});
  return Outcome::done;
}

void Engine::Loop::delete_session(ServerSession& s) {
  if (!s.body) store.remove(s.id);
  log.info("session_deleted", {{"session", s.id}});
  sessions.erase(s.id);
}

nlohmann::json Engine::Loop::session_info(const ServerSession& s) const {
  nlohmann::json j = {{"id", s.id}, {"object", "session"}, {"created_at", static_cast<long long>(s.created)},
                      {"last_used_at", static_cast<long long>(s.last_used)}};
  if (!s.body) return j;
  const SessionBody& b = *s.body;
  auto transcript = nlohmann::json::array();
  for (const auto& m : b.transcript) transcript.push_back({{"role", m.role}, {"content", m.content}});
  j["position"] = b.seq.position();
  j["policy"] = to_string(b.seq.state.policy);
  j["state_bytes"] = state_bytes(b.seq);
  j["memory_bytes"] = b.charge(model);
  j["turns"] = b.turns.size();
  j["busy"] = s.task != nullptr;
  j["transcript"] = std::move(transcript);
  return j;
}

Engine::Loop::Outcome Engine::Loop::session_op(Command& c, SessionCommand& op) {
  using Kind = SessionCommand::Kind;
  const std::string& owner = c.job->owner();
  if (op.kind == Kind::list) {
    auto data = nlohmann::json::array();
    for (const auto& [id, s] : sessions)
      if (s.owner == owner)
        data.push_back({{"id", id}, {"object", "session"}, {"created_at", static_cast<long long>(s.created)},
                        {"last_used_at", static_cast<long long>(s.last_used)}, {"in_memory", s.body != nullptr}});
    c.job->push(Done{{}, {{"object", "list"}, {"data", data}}});
    return Outcome::done;
  }
  if (op.kind == Kind::restore) {
    check_session_limit();
    if (!checkpoints.find(owner, op.checkpoint_id)) throw not_found(fmt::format("no checkpoint {}", op.checkpoint_id));
    if (const Outcome o = make_room(model.max_state_bytes()); o != Outcome::done) return o;
    SessionSnapshot snap = checkpoints.read(owner, op.checkpoint_id);
    auto body = std::make_unique<SessionBody>();
    try {
      body->seq = from_snapshot(snap, model, tokenizer);
    } catch (const std::exception& e) {
      throw ApiError(409, fmt::format("checkpoint {} cannot be restored: {}", op.checkpoint_id, e.what()), {},
                     "invalid_checkpoint");
    }
    if (backend.on_device()) {
      const SlotNeed slot = device_slots(body->seq.state.policy, 1);
      if (const Outcome o = make_room(0, nullptr, slot); o != Outcome::done) return o;
      backend.place(body->seq);
    }
    body->transcript = std::move(snap.transcript);
    ServerSession& s = new_session(owner, std::move(body));
    c.job->push(Done{{}, session_info(s)});
    return Outcome::done;
  }

  ServerSession& s = find_session(op.session_id, owner);
  if (op.kind == Kind::cancel) {
    const bool running = s.task != nullptr;
    if (running) s.task->job->cancel();
    c.job->push(Done{{}, {{"id", s.id}, {"object", "session.cancel"}, {"cancelled", running}}});
    return Outcome::done;
  }
  if (op.kind == Kind::remove) {
    if (s.task) {
      s.task->job->cancel();  // its work ends cancelled at the next step; then the session goes
      return Outcome::defer_busy;
    }
    const std::string id = s.id;
    delete_session(s);
    c.job->push(Done{{}, {{"id", id}, {"object", "session.deleted"}, {"deleted", true}}});
    return Outcome::done;
  }
  if (s.task && op.kind != Kind::get) return Outcome::defer_busy;
  if (const Outcome o = ensure_resident(s); o != Outcome::done) return o;
  s.touched = Clock::now();
  SessionBody& b = *s.body;
  switch (op.kind) {
    case Kind::get: break;
    case Kind::fork: {
      check_session_limit();
      const SlotNeed slot = device_slots(b.seq.state.policy, 1);
      if (const Outcome o = make_room(b.charge(model), &s, slot); o != Outcome::done) return o;
      ServerSession& copy = new_session(owner, std::make_unique<SessionBody>(b));
      c.job->push(Done{{}, session_info(copy)});
      return Outcome::done;
    }
    case Kind::undo: {
      if (b.turns.empty())
        throw ApiError(409, "nothing to undo: no turn start is kept (see --max-turns-kept)", {}, "nothing_to_undo");
      Turn& turn = b.turns.back();
      turn.state.policy = b.seq.state.policy;  // a policy change (strict to slide) stays
      assign_state(b.seq, std::move(turn.state));
      b.seq.next_logits = std::move(turn.next_logits);
      b.seq.history.resize(turn.history_size);
      b.transcript.resize(turn.transcript_size);
      b.turns.pop_back();
      s.last_used = unix_now();
      break;
    }
    case Kind::checkpoint: {
      SessionSnapshot snap = to_snapshot(b.seq, model, config.prefill_chunk);
      snap.transcript = b.transcript;  // travels in the state file, to whichever server restores it
      const CheckpointInfo info = checkpoints.create(owner, snap, "session " + s.id);
      log.info("checkpoint_created", {{"checkpoint", info.id}, {"session", s.id}, {"bytes", info.bytes}});
      c.job->push(Done{{}, to_json(info)});
      return Outcome::done;
    }
    default: break;
  }
  c.job->push(Done{{}, session_info(s)});
  return Outcome::done;
}

}  // namespace mhla::serve
