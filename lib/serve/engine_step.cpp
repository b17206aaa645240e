// One engine step: a batched forward pass over every active request, then sampling, events
// and the end of finished requests.
#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <numeric>
#include <utility>

#include "mhla/error.hpp"
#include "serve/engine_loop.hpp"

namespace mhla::serve {

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// log-softmax of the raw logits at `id`, and the `top` most likely tokens (ties: lower id).
TokenLogprob logprob_of(const std::vector<float>& logits, int id, int top) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - max);
  const double log_z = max + std::log(sum);
  TokenLogprob lp;
  lp.logprob = static_cast<float>(logits[static_cast<size_t>(id)] - log_z);
  if (top > 0) {
    std::vector<int> ids(logits.size());
    std::iota(ids.begin(), ids.end(), 0);
    const auto k = std::min<size_t>(static_cast<size_t>(top), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + static_cast<long>(k), ids.end(), [&](int a, int b) {
      return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
             (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
    });
    for (size_t i = 0; i < k; ++i)
      lp.top.push_back({ids[i], static_cast<float>(logits[static_cast<size_t>(ids[i])] - log_z)});
  }
  return lp;
}

}  // namespace

void Engine::Loop::step() {
  const auto t0 = Clock::now();
  std::vector<SequenceRun> batch;
  std::vector<std::pair<Task*, Choice*>> decodes;
  for (auto& t : tasks)
    for (auto& ch : t->choices)
      if (ch.feed >= 0 && !t->aborted) {
        ch.seq->history.push_back(ch.feed);  // taken back if the step fails
        SequenceRun run{ch.seq, {&ch.feed, 1}, LogitsMode::last};
        // On a GPU a stateless request's next token is sampled there, so only its id comes
        // back. A session keeps host sampling: its last logits must stay for a later turn
        // (a continuation, a checkpoint) even when the reply is cancelled; so do requests
        // showing log-probabilities.
        if (backend.on_device() && !t->session && !ch.finished && t->cmd.gen->top_logprobs < 0) {
          ch.sampled = DeviceSampling{&ch.seq->sampler, ch.seq->history};
          run.logits = LogitsMode::none;
          run.sampling = &ch.sampled;
        }
        batch.push_back(run);
        decodes.emplace_back(t.get(), &ch);
      }
  // Prefill takes what the decodes leave of the budget, in whole pieces, first come first
  // served; the oldest prefill always gets at least one piece so it cannot starve.
  const auto piece = static_cast<std::size_t>(config.prefill_chunk);
  long long budget = config.step_tokens - static_cast<long long>(decodes.size());
  std::vector<std::pair<Task*, std::size_t>> prefills;
  for (auto& t : tasks) {
    if (!t->prefilling()) continue;  // also skips aborted tasks
    std::size_t end = t->input.size();
    for (const std::size_t cap : t->captures)
      if (cap > t->fed) {
        end = std::min(end, cap);
        break;
      }
    std::size_t allowed = budget > 0 ? static_cast<std::size_t>(budget) / piece * piece : 0;
    if (allowed == 0 && prefills.empty()) allowed = piece;
    const std::size_t take = std::min(end - t->fed, allowed);
    if (take == 0) break;
    const bool last = t->fed + take == t->input.size();
    batch.push_back({t->seq, std::span<const int>(t->input).subspan(t->fed, take),
                     last ? LogitsMode::last : LogitsMode::none});
    prefills.emplace_back(t.get(), take);
    budget -= static_cast<long long>(take);
  }
  if (batch.empty()) return;

  // Decodes come first in the batch, then prefills.
  std::vector<char> ran(batch.size(), 0);
  bool any_ran = false;
  for (const auto& group : backend.groups(batch)) {
    try {
      backend.forward(batch, group);
    } catch (const std::exception& e) {
      // forward() checks every sequence before it changes any state, so a refusal moves
      // nothing; a failure at run time (device memory, a CUDA error) can come after the decode
      // rows ran, whose history then keeps the token they consumed.
      log.error("step_failed", {{"reason", e.what()}});
      for (const std::size_t i : group)
        if (i < decodes.size()) {
          Sequence& s = *decodes[i].second->seq;
          if (s.position() < static_cast<long long>(s.history.size())) s.history.pop_back();
          decodes[i].second->sampled = {};
          decodes[i].first->job->cancel();
        } else
          abort(*prefills[i - decodes.size()].first,
                ApiError(500, fmt::format("the model refused the input: {}", e.what())));
      continue;
    }
    for (const std::size_t i : group) ran[i] = 1;
    any_ran = true;
  }
  if (!any_ran) return;

  for (std::size_t i = 0; i < decodes.size(); ++i) {
    if (!ran[i]) continue;
    auto [t, ch] = decodes[i];
    ch->feed = -1;
    if (!ch->finished && !t->aborted) guarded(*t, [&, t = t, ch = ch] { sample_next(*t, *ch); });
  }
  for (std::size_t i = 0; i < prefills.size(); ++i) {
    if (!ran[decodes.size() + i]) continue;
    auto [t, n] = prefills[i];
    t->seq->history.insert(t->seq->history.end(), t->input.begin() + static_cast<long>(t->fed),
                           t->input.begin() + static_cast<long>(t->fed + n));
    t->fed += n;
    metrics.prompt_tokens += static_cast<long long>(n);
    if (std::find(t->captures.begin(), t->captures.end(), t->fed) != t->captures.end()) {
      const std::span<const int> prefix_tokens = std::span<const int>(t->input).first(t->fed);
      // On a GPU the cache takes the state downloaded to the CPU form. Download and upload copy
      // the fp32 state exactly and the GPU prefills every piece after the first from a non-zero
      // position either way, so a prompt resumed from it continues as it would from scratch
      // (up to the batch-dependent rounding every GPU step has).
      if (t->seq->slot)
        prefix.insert(t->policy, prefix_tokens, host_state(*t->seq));
      else
        prefix.insert(t->policy, prefix_tokens, t->seq->state);
    }
    if (!t->prefilling())
      guarded(*t, [&, t = t] { prefill_done(*t); });
    else if (t->cmd.progress)
      t->job->push(Progress{static_cast<long long>(t->fed - t->prefill_from),
                            static_cast<long long>(t->input.size() - t->prefill_from)});
  }
  metrics.step_seconds.observe(seconds(Clock::now() - t0));
}

void Engine::Loop::prefill_done(Task& t) {
  if (t.session) {
    SessionBody& b = *t.session->body;
    b.transcript.insert(b.transcript.end(), t.transcript_add.begin(), t.transcript_add.end());
    t.rollback.reset();
  }
  if (t.cmd.gen) start_choices(t);
}

void Engine::Loop::start_choices(Task& t) {
  const GenerationSpec& g = *t.cmd.gen;
  for (int i = 0; i < g.n; ++i) {
    Choice ch;
    ch.index = i;
    if (i == 0) {
      ch.seq = t.seq;
    } else {
      ch.own = std::make_unique<Sequence>(*t.seq);
      ch.seq = ch.own.get();
    }
    if (t.session) {
      // A session's sampler keeps its random sequence across turns unless a seed is given.
      if (g.seed_given) ch.seq->sampler.reseed(g.sampling.seed);
      ch.seq->sampler.set_params(g.sampling);
    } else {
      SamplingParams p = g.sampling;
      p.seed += static_cast<std::uint64_t>(i);  // each choice its own random sequence
      ch.seq->sampler = Sampler(p);
    }
    ch.checker.emplace(g.stop);
    if (tokenizer) ch.text.emplace(*tokenizer, ch.seq->history);
    t.choices.push_back(std::move(ch));
  }
  for (auto& ch : t.choices) sample_next(t, ch);
}

void Engine::Loop::sample_next(Task& t, Choice& ch) {
  Sequence& s = *ch.seq;
  const DeviceSampling sampled = std::exchange(ch.sampled, {});
  // Every sampled token is run through the model, so under strict the last token that fits
  // is the last one.
  if (s.state.policy == ContextPolicy::strict && s.position() >= model.trained_window()) {
    finish_choice(t, ch, "length");
    return;
  }
  if (t.job->cancelled()) {
    finish_choice(t, ch, "cancelled");
    return;
  }
  const GenerationSpec& g = *t.cmd.gen;
  if (sampled.sampler && !sampled.error.empty()) throw Error(sampled.error);
  const int id = sampled.sampler ? sampled.token : s.sampler.sample(s.next_logits, s.history);
  Token ev;
  ev.choice = ch.index;
  ev.id = id;
  if (g.top_logprobs >= 0) ev.logprob = logprob_of(s.next_logits, id, g.top_logprobs);
  const StopStep st = ch.checker->push(id, ch.text ? ch.text->push(id) : std::string());
  ev.text = st.text;
  ch.shown += st.text;
  ch.feed = id;

  const auto now = Clock::now();
  if (!t.first_token) {
    t.first_token = true;
    metrics.time_to_first_token.observe(seconds(now - t.arrived));
  } else if (ch.any_token) {
    metrics.inter_token_latency.observe(seconds(now - ch.last_token));
  }
  ch.any_token = true;
  ch.last_token = now;
  ++t.usage.completion_tokens;
  metrics.count_generated(1);
  t.job->push(std::move(ev));
  if (st.reason != StopReason::none) finish_choice(t, ch, std::string(to_string(st.reason)));
}

void Engine::Loop::finish_choice(Task& t, Choice& ch, const std::string& reason) {
  std::string tail;
  if (reason != "stop") {
    if (ch.checker->reason() == StopReason::none) tail = ch.checker->finish();
    if (ch.text) tail += ch.text->flush();
  }
  ch.shown += tail;
  ch.finished = true;
  // A session runs its last token through the model too, so it is ready for the next turn;
  // a stateless request's sequence is dropped.
  if (!t.session) ch.feed = -1;
  if (reason == "cancelled" && ch.index == 0) ++metrics.cancelled;
  t.job->push(Finished{ch.index, reason, std::move(tail)});
}

void Engine::Loop::cancel_tasks() {
  for (auto& t : tasks) {
    if (t->aborted || !t->job->cancelled()) continue;
    if (t->prefilling()) {
      ++metrics.cancelled;
      abort(*t, std::nullopt);
      continue;
    }
    for (auto& ch : t->choices)
      if (!ch.finished) finish_choice(*t, ch, "cancelled");
  }
}

void Engine::Loop::retire_tasks() {
  for (auto it = tasks.begin(); it != tasks.end();) {
    Task& t = **it;
    const bool aborted = t.aborted;
    const bool done = !t.prefilling() &&
                      std::all_of(t.choices.begin(), t.choices.end(), [](const Choice& ch) { return ch.finished && ch.feed < 0; });
    if (!aborted && !done) {
      ++it;
      continue;
    }
    if (!aborted) complete(t);
    it = tasks.erase(it);
  }
}

void Engine::Loop::complete(Task& t) {
  nlohmann::json info;
  if (ServerSession* s = t.session) {
    SessionBody& b = *s->body;
    if (t.cmd.gen) {
      std::string reply = t.choices.front().shown;
      if (t.cmd.gen->chat && reply.starts_with(' ')) reply.erase(0, 1);
      b.transcript.push_back({"assistant", std::move(reply)});
      if (!b.turns.empty()) b.turns.back().has_reply = true;
    }
    s->task = nullptr;
    s->touched = Clock::now();
    s->last_used = unix_now();
    info = session_info(*s);
  }
  t.job->push(Done{t.usage, std::move(info)});
}

void Engine::Loop::abort(Task& t, const std::optional<ApiError>& error) {
  if (t.aborted) return;
  if (ServerSession* s = t.session) {
    s->task = nullptr;
    SessionBody& b = *s->body;
    if (t.cmd.kind == WorkCommand::Kind::create_session) {
      delete_session(*s);
    } else if (t.prefilling() && t.opened_turn && !b.turns.empty()) {
      // The input never fully went in: back to the turn's start, as if it was never sent.
      Turn& turn = b.turns.back();
      turn.state.policy = b.seq.state.policy;
      assign_state(b.seq, std::move(turn.state));
      b.seq.next_logits = std::move(turn.next_logits);
      b.seq.history.resize(turn.history_size);
      b.transcript.resize(turn.transcript_size);
      b.turns.pop_back();
    } else if (t.prefilling() && t.rollback) {
      b.seq = std::move(*t.rollback);
      if (!b.turns.empty() && !b.turns.back().has_reply) {
        Turn& turn = b.turns.back();
        turn.input.resize(turn.input.size() - t.joined_tokens);
        turn.input_entries -= t.joined_entries;
      }
    }
  }
  t.aborted = true;
  if (error)
    t.job->push(Failed{*error});
  else
    t.job->push(Done{t.usage, {{"cancelled", true}}});
}

}  // namespace mhla::serve
