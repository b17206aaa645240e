#include "mhla/session.hpp"

#include <fmt/format.h>
#include <utility>

#include "mhla/error.hpp"
#include "mhla/text_stream.hpp"

namespace mhla {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

Session::Session(const Model& model, const Tokenizer* tokenizer, SessionOptions options)
    : model_(&model),
      tokenizer_(tokenizer),
      chunk_(options.prefill_chunk),
      state_(model.new_state(options.policy)),
      sampler_(options.sampling) {
  options.sampling.validate();
  if (options.device) {
    if (&options.device->model() != &model) throw Error("the device model was made from another model");
    if (options.device->policy() != options.policy)
      throw Error(fmt::format("the device model runs the {} policy but the session asks for {}",
                              to_string(options.device->policy()), to_string(options.policy)));
    slot_ = DeviceSlot(*options.device);
  }
  if (chunk_ <= 0) throw Error(fmt::format("prefill chunk must be positive, got {}", chunk_));
  if (tokenizer_ && tokenizer_->vocab_size() > model.config().vocab_size)
    throw Error(fmt::format("the tokenizer has {} pieces but the model's vocabulary holds {}",
                            tokenizer_->vocab_size(), model.config().vocab_size));
}

std::vector<int> Session::encode(std::string_view text, bool add_bos) const {
  if (!tokenizer_)
    throw Error(fmt::format("the model in {} has no tokenizer.model, so it takes token ids only (give --prompt-ids)",
                            model_->directory()));
  return tokenizer_->encode(text, add_bos);
}

void Session::append(std::span<const int> tokens) {
  if (tokens.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  run(tokens, chunk_);
  history_.insert(history_.end(), tokens.begin(), tokens.end());
  stats_.prefill_tokens += static_cast<long long>(tokens.size());
  stats_.prefill_seconds += seconds_since(t0);
}

GenerateResult Session::generate(const StopCriteria& stop, const TokenCallback& on_token) {
  stop.validate();
  if (next_logits_.empty()) throw Error("nothing to continue from: append a prompt before generating");
  GenerateResult result;
  StopChecker checker(stop);
  std::optional<TextStream> stream;
  if (tokenizer_) stream.emplace(*tokenizer_, history_);
  const auto t0 = std::chrono::steady_clock::now();
  const long long start = position();
  while (true) {
    // Every sampled token is fed back, so under strict the last token that fits is the last one.
    if (policy() == ContextPolicy::strict && position() >= model_->trained_window()) {
      result.reason = StopReason::length;
      break;
    }
    const int id = sampler_.sample(next_logits_, history_);
    run({&id, 1}, 1);
    history_.push_back(id);
    result.tokens.push_back(id);
    const StopStep step = checker.push(id, stream ? stream->push(id) : std::string());
    result.text += step.text;
    const bool keep_going = !on_token || on_token(id, step.text);
    if (step.reason != StopReason::none) {
      result.reason = step.reason;
      break;
    }
    if (!keep_going) {
      result.cancelled = true;
      break;
    }
  }
  if (result.reason != StopReason::stop) {
    std::string tail = checker.reason() == StopReason::none ? checker.finish() : std::string();
    if (stream) tail += stream->flush();
    if (!tail.empty()) {
      result.text += tail;
      if (on_token) on_token(-1, tail);
    }
  }
  stats_.decode_tokens += position() - start;
  stats_.decode_seconds += seconds_since(t0);
  return result;
}

void Session::run(std::span<const int> tokens, long long chunk) {
  if (slot_) {
    const DeviceStep step{slot_.slot(), tokens, LogitsMode::last, &next_logits_};
    slot_.device()->forward({&step, 1});
    host_stale_ = true;
    return;
  }
  const SequenceStep step{&state_, tokens, LogitsMode::last, &next_logits_};
  model_->forward({&step, 1}, chunk);
}

long long Session::position() const { return slot_ ? slot_.device()->position(slot_.slot()) : state_.position(); }

size_t Session::state_bytes() const { return slot_ ? slot_.device()->slot_bytes() : state_.byte_size(); }

const ModelState& Session::state() const {
  if (host_stale_) {
    state_ = slot_.device()->download(slot_.slot());
    host_stale_ = false;
  }
  return state_;
}

ModelState& Session::state() {
  // On a device the returned state is a copy: changes to it reach the device only by restore().
  return const_cast<ModelState&>(std::as_const(*this).state());
}

void Session::set_policy(ContextPolicy policy) {
  if (policy == state_.policy) return;
  if (slot_)
    throw Error(fmt::format("the session runs on a device model made for the {} policy; it cannot change to {}",
                            to_string(state_.policy), to_string(policy)));
  if (state_.policy != ContextPolicy::strict)
    throw Error(fmt::format("the session runs the {} policy; only strict can change (to a slide policy)",
                            to_string(state_.policy)));
  state_.policy = policy;
}

void Session::restore(ModelState state, std::vector<int> history, std::vector<float> next_logits) {
  if (slot_) {
    if (state.policy != slot_.device()->policy())
      throw Error(fmt::format("the state runs the {} policy but the device model runs {}", to_string(state.policy),
                              to_string(slot_.device()->policy())));
    slot_.device()->upload(slot_.slot(), state);
    host_stale_ = false;
  }
  state_ = std::move(state);
  history_ = std::move(history);
  next_logits_ = std::move(next_logits);
}

}  // namespace mhla
