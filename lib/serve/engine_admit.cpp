// Admitting work: checking it, finding memory for it, and setting up its prefill.
#include <algorithm>
#include <fmt/format.h>

#include "serve/engine_loop.hpp"
#include "serve/ids.hpp"

namespace mhla::serve {

Engine::Loop::Outcome Engine::Loop::admit(Command& c, WorkCommand& w) {
  switch (w.kind) {
    case WorkCommand::Kind::completion: return admit_stateless(c, w);
    case WorkCommand::Kind::create_session: return admit_create(c, w);
    default: return admit_session(c, w);
  }
}

void Engine::Loop::check_prompt(ContextPolicy policy, long long position, std::size_t tokens) const {
  if (static_cast<long long>(tokens) > config.max_prompt_tokens)
    throw ApiError(400,
                   fmt::format("the input has {} tokens; this server takes at most {} per request "
                               "(--max-prompt-tokens)",
                               tokens, config.max_prompt_tokens),
                   "prompt", "context_length_exceeded");
  const long long end = position + static_cast<long long>(tokens);
  if (policy == ContextPolicy::strict && end > model.trained_window())
    throw ApiError(400,
                   fmt::format("the input would end at position {} but the model's trained window is {} tokens and "
                               "the policy is strict; shorten it or ask for \"policy\": \"slide_mean\"",
                               end, model.trained_window()),
                   "prompt", "context_length_exceeded");
}

Task& Engine::Loop::add_task(Command& c, WorkCommand& w) {
  auto t = std::make_unique<Task>();
  t->job = c.job;
  t->cmd = std::move(w);
  t->arrived = c.arrived;
  tasks.push_back(std::move(t));
  return *tasks.back();
}

void Engine::Loop::use_prefix_cache(Task& t) {
  if (auto hit = prefix.lookup(t.policy, t.input)) {
    assign_state(*t.seq, std::move(hit->state));
    t.seq->history.assign(t.input.begin(), t.input.begin() + static_cast<long>(hit->length));
    t.fed = hit->length;
  }
  t.prefill_from = t.fed;
  t.usage.cached_tokens = static_cast<long long>(t.fed);
  metrics.cached_prompt_tokens += static_cast<long long>(t.fed);
  t.captures = prefix.plan(t.policy, t.input, t.fed);
}

Engine::Loop::Outcome Engine::Loop::admit_stateless(Command& c, WorkCommand& w) {
  const ContextPolicy policy = w.policy.value_or(config.policy);
  if (w.tokens.empty()) throw bad_request("the prompt is empty", "prompt");
  check_prompt(policy, 0, w.tokens.size());
  const int n = w.gen ? w.gen->n : 1;
  const std::size_t need = static_cast<std::size_t>(n) * model.max_state_bytes();
  if (need > config.state_memory)
    throw ApiError(400,
                   fmt::format("n = {} needs {} bytes of state memory but the server has {} (--state-memory)", n,
                               need, config.state_memory),
                   "n");
  const SlotNeed slots = device_slots(policy, n);  // the prompt's sequence, then a fork per further choice
  if (const Outcome o = make_room(need, nullptr, slots); o != Outcome::done) return o;
  Task& t = add_task(c, w);
  t.policy = policy;
  t.own = std::make_unique<Sequence>(backend.new_sequence(policy));
  t.seq = t.own.get();
  t.charge = need;
  t.input = std::move(t.cmd.tokens);
  use_prefix_cache(t);
  t.usage.prompt_tokens = static_cast<long long>(t.input.size());
  t.job->push(Started{t.usage.prompt_tokens, t.usage.cached_tokens});
  return Outcome::done;
}

Engine::Loop::Outcome Engine::Loop::admit_create(Command& c, WorkCommand& w) {
  check_session_limit();
  const ContextPolicy policy = w.policy.value_or(config.policy);
  std::vector<int> input = std::move(w.tokens);
  std::vector<ChatMessage> entries;
  if (w.has_messages) {
    if (!tokenizer) throw bad_request("chat messages need a tokenizer and this model has none; send token ids", "messages");
    input = tokenizer->encode(chat.render(w.messages, false, false), chat.add_bos());
    entries = w.messages;
  } else if (!input.empty()) {
    entries.push_back({"text", w.text});
  }
  check_prompt(policy, 0, input.size());
  const SlotNeed slot = device_slots(policy, 1);
  if (const Outcome o = make_room(model.max_state_bytes(), nullptr, slot); o != Outcome::done) return o;

  auto body = std::make_unique<SessionBody>();
  body->seq = backend.new_sequence(policy);
  body->seq.sampler.reseed(random_seed());
  ServerSession& s = new_session(c.job->owner(), std::move(body));
  if (input.empty()) {
    c.job->push(Started{});
    c.job->push(Done{{}, session_info(s)});
    return Outcome::done;
  }
  Task& t = add_task(c, w);
  t.session = &s;
  s.task = &t;
  t.seq = &s.body->seq;
  t.policy = policy;
  t.input = std::move(input);
  t.transcript_add = std::move(entries);
  use_prefix_cache(t);
  t.usage.prompt_tokens = static_cast<long long>(t.input.size());
  t.job->push(Started{t.usage.prompt_tokens, t.usage.cached_tokens});
  return Outcome::done;
}

std::vector<int> Engine::Loop::session_input(ServerSession& s, const WorkCommand& w, std::vector<ChatMessage>& entries) {
  SessionBody& b = *s.body;
  const bool at_start = b.seq.position() == 0;
  if (w.has_messages) {
    if (!tokenizer) throw bad_request("chat messages need a tokenizer and this model has none; send token ids", "messages");
    // The conversation may come again in full (as OpenAI clients send it): only what
    // follows the session's transcript is new.
    std::span<const ChatMessage> fresh = w.messages;
    if (b.transcript.size() <= w.messages.size() &&
        std::equal(b.transcript.begin(), b.transcript.end(), w.messages.begin()))
      fresh = fresh.subspan(b.transcript.size());
    const bool has_user = std::any_of(b.transcript.begin(), b.transcript.end(), [](const auto& m) { return m.role == "user"; });
    entries.assign(fresh.begin(), fresh.end());
    if (fresh.empty()) return {};
    return tokenizer->encode(chat.render(fresh, has_user, w.gen.has_value()), at_start && chat.add_bos());
  }
  std::vector<int> tokens = w.tokens;
  if (!tokens.empty() && at_start && w.add_bos)
    tokens.insert(tokens.begin(), tokenizer ? tokenizer->bos_id() : model.config().bos_token_id);
  if (!tokens.empty()) entries.push_back({"text", w.text});
  return tokens;
}

Engine::Loop::Outcome Engine::Loop::admit_session(Command& c, WorkCommand& w) {
  ServerSession& s = find_session(w.session_id, c.job->owner());
  if (s.task) return Outcome::defer_busy;
  if (const Outcome o = ensure_resident(s); o != Outcome::done) return o;
  s.touched = Clock::now();
  SessionBody& b = *s.body;
  const bool regenerate = w.kind == WorkCommand::Kind::regenerate;

  ContextPolicy policy = b.seq.state.policy;
  if (w.policy && *w.policy != policy) {
    if (policy != ContextPolicy::strict)
      throw bad_request(fmt::format("the session runs the {} policy; only strict can change (to a slide policy)",
                                    to_string(policy)),
                        "policy");
    policy = *w.policy;  // applied once the request is accepted
  }

  std::vector<ChatMessage> entries;
  std::vector<int> input;
  bool new_turn = false;
  if (regenerate) {
    if (b.turns.empty() || !b.turns.back().has_reply)
      throw ApiError(409,
                     "nothing to regenerate: the session's last turn has no reply, or no turn start is kept "
                     "(--max-turns-kept)",
                     {}, "nothing_to_regenerate");
    input = b.turns.back().input;
  } else {
    input = session_input(s, w, entries);
    if (w.kind == WorkCommand::Kind::append && input.empty())
      throw bad_request("nothing to append: give text, tokens or messages");
    check_prompt(policy, b.seq.position(), input.size());
    const bool open = b.turns.empty() || b.turns.back().has_reply;
    new_turn = open && (!input.empty() || w.kind == WorkCommand::Kind::generate) && config.max_turns_kept > 0;
    const std::size_t copy_bytes = state_bytes(b.seq) + b.seq.next_logits.size() * sizeof(float);
    if (!input.empty())
      if (const Outcome o = make_room(copy_bytes, &s); o != Outcome::done) return o;
  }
  if (w.gen && input.empty() && b.seq.next_logits.empty() && !regenerate)
    throw bad_request("the session is empty: append a prompt before generating");
  if (backend.on_device()) {
    // A new policy's model takes the session into one of its slots; the copy kept for a
    // rollback there, and later (once the rollback copy is gone) the forks of further choices.
    const bool rollback = !regenerate && !new_turn && !input.empty();
    const int count = (policy != b.seq.state.policy ? 1 : 0) + std::max(rollback ? 1 : 0, w.gen ? w.gen->n - 1 : 0);
    if (count > 0)
      if (const Outcome o = make_room(0, &s, device_slots(policy, count)); o != Outcome::done) return o;
  }

  const long long before = b.seq.position();
  if (regenerate) {
    // Back to the turn's start, its input again; the sampler keeps its place so the new
    // reply differs unless a seed is given.
    Turn& turn = b.turns.back();
    ModelState start = turn.state;
    start.policy = b.seq.state.policy;  // the request's policy is applied below
    assign_state(b.seq, std::move(start));
    b.seq.next_logits = turn.next_logits;
    b.seq.history.resize(turn.history_size);
    b.transcript.resize(turn.transcript_size + turn.input_entries);
    turn.has_reply = false;
  } else if (new_turn) {
    b.turns.push_back(Turn{host_state(b.seq), b.seq.next_logits, b.seq.history.size(), input, b.transcript.size(),
                           entries.size(), false});
    while (b.turns.size() > static_cast<std::size_t>(config.max_turns_kept)) b.turns.pop_front();
  } else if (!b.turns.empty() && !b.turns.back().has_reply) {
    Turn& turn = b.turns.back();  // more input for a turn that has not generated yet
    turn.input.insert(turn.input.end(), input.begin(), input.end());
    turn.input_entries += entries.size();
  }
  backend.set_policy(b.seq, policy);
  const std::size_t joined_tokens = regenerate || new_turn ? 0 : input.size();
  const std::size_t joined_entries = regenerate || new_turn ? 0 : entries.size();

  Task& t = add_task(c, w);
  t.session = &s;
  s.task = &t;
  t.seq = &b.seq;
  t.policy = b.seq.state.policy;
  t.input = std::move(input);
  t.transcript_add = std::move(entries);
  t.opened_turn = regenerate || new_turn;
  if (regenerate && t.cmd.gen) {
    // A chat turn is regenerated as a chat reply: the template's stop strings apply again.
    const Turn& turn = b.turns.back();
    const auto first = b.transcript.begin() + static_cast<long>(turn.transcript_size);
    if (std::any_of(first, b.transcript.end(), [](const ChatMessage& e) { return e.role != "text"; })) {
      t.cmd.gen->chat = true;
      for (const auto& text : chat.stop()) t.cmd.gen->stop.stop_strings.push_back(text);
    }
  }
  if (!b.turns.empty() && !b.turns.back().has_reply) {
    t.joined_tokens = joined_tokens;
    t.joined_entries = joined_entries;
  }
  if (!t.opened_turn && !t.input.empty()) t.rollback = b.seq;
  const long long position = regenerate ? b.seq.position() : before;
  t.usage.prompt_tokens = position + static_cast<long long>(t.input.size());
  t.usage.cached_tokens = position;
  metrics.cached_prompt_tokens += position;
  t.job->push(Started{t.usage.prompt_tokens, t.usage.cached_tokens});
  if (t.input.empty()) guarded(t, [&] { prefill_done(t); });
  return Outcome::done;
}

}  // namespace mhla::serve
