#pragma once
// A conversation with a model: its recurrent state, token history, sampler (with its RNG) and
// the logits that predict the next token. New text is prefilled on top of the state, so each
// turn processes only what is new. Copying a session forks it (on a device: into a new slot).
#include <chrono>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/device.hpp"
#include "mhla/model.hpp"
#include "mhla/sampling.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla {

struct SessionOptions {
  ContextPolicy policy = ContextPolicy::strict;
  long long prefill_chunk = 256;
  SamplingParams sampling;
  // Runs the session on this device model (one of its state slots) instead of the CPU; it must
  // run the same policy and outlive the session.
  DeviceModel* device = nullptr;
};

// Time spent and tokens processed, summed over a session's calls.
struct SessionStats {
  long long prefill_tokens = 0;
  double prefill_seconds = 0;
  long long decode_tokens = 0;
  double decode_seconds = 0;
};

struct GenerateResult {
  std::vector<int> tokens;  // every sampled token, stop tokens included
  std::string text;         // the text shown (stop strings withheld)
  StopReason reason = StopReason::none;
  bool cancelled = false;
};

class Session {
public:
  // `tokenizer` may be null: the session then takes token ids only.
  Session(const Model& model, const Tokenizer* tokenizer, SessionOptions options);

  // Text to token ids (BOS first when add_bos); throws mhla::Error when there is no tokenizer.
  std::vector<int> encode(std::string_view text, bool add_bos) const;

  // Prefills tokens after what the session holds. Refusals (bad ids, the trained window under
  // strict) leave the session as it was.
  void append(std::span<const int> tokens);

  // Called with each sampled token and the text it completes (possibly empty, UTF-8 whole);
  // returning false cancels the generation. Text released at the end (held-back bytes or a
  // possible stop-string prefix that never completed) comes with id -1.
  using TokenCallback = std::function<bool(int id, std::string_view text)>;

  // Samples up to the stop criteria; every sampled token is fed back, so the session is ready
  // for the next turn. Needs at least one token appended first. Stops with reason `length`
  // when the trained window is reached under the strict policy.
  GenerateResult generate(const StopCriteria& stop, const TokenCallback& on_token = {});

  const Model& model() const { return *model_; }
  const Tokenizer* tokenizer() const { return tokenizer_; }
  const std::vector<int>& history() const { return history_; }
  long long position() const;
  // Bytes of the state now (on a device: the slot it occupies).
  size_t state_bytes() const;
  // The state in the CPU form (on a device: copied from it when it has changed).
  const ModelState& state() const;
  ModelState& state();
  DeviceModel* device() const { return slot_.device(); }
  const std::vector<float>& next_logits() const { return next_logits_; }
  Sampler& sampler() { return sampler_; }
  const Sampler& sampler() const { return sampler_; }
  ContextPolicy policy() const { return state_.policy; }
  // Allowed strict -> slide (identical inside the window); other changes are refused.
  void set_policy(ContextPolicy policy);
  long long prefill_chunk() const { return chunk_; }
  const SessionStats& stats() const { return stats_; }

  // Restores a session's contents (checkpoints); the caller has validated them.
  void restore(ModelState state, std::vector<int> history, std::vector<float> next_logits);

private:
  // Runs tokens from the current state and leaves the logits of the last one in next_logits_.
  void run(std::span<const int> tokens, long long chunk);

  const Model* model_;
  const Tokenizer* tokenizer_;
  long long chunk_;
  DeviceSlot slot_;
  mutable ModelState state_;
  mutable bool host_stale_ = false;  // the device slot holds newer state than state_
  Sampler sampler_;
  std::vector<int> history_;
  std::vector<float> next_logits_;
  SessionStats stats_;
};

}  // namespace mhla
