#include "serve/backend.hpp"

#include <algorithm>
#include <climits>
#include <fmt/format.h>
#include <map>

#include "mhla/error.hpp"
#include "serve/api_error.hpp"

namespace mhla::serve {

namespace {

// One slot per sequence the server's limits let live at once: --state-memory holds that many
// states at their largest, and there are never more than --max-sessions sessions plus one
// request's --max-n choices beyond what memory allows.
int pool_size(const Model& model, const ServerConfig& c) {
  const std::size_t by_memory = c.state_memory / model.max_state_bytes();
  const std::size_t by_limits = static_cast<std::size_t>(c.max_sessions) + static_cast<std::size_t>(c.max_n);
  return static_cast<int>(std::clamp<std::size_t>(std::min(by_memory, by_limits), 1, INT_MAX));
}

}  // namespace

Backend::Backend(const Model& model, const ServerConfig& config, Logger& log)
    : model_(model), chunk_(config.prefill_chunk), log_(log) {
  device_ = parse_device(config.device);
  if (device_ == Device::cpu) return;
  precision_ = parse_device_precision(config.precision);
  batch_invariant_ = config.batch_invariant;
  slots_ = pool_size(model, config);
  models_[static_cast<std::size_t>(config.policy)] = make(config.policy);
  description_ = models_[static_cast<std::size_t>(config.policy)]->description();
}

std::unique_ptr<DeviceModel> Backend::make(ContextPolicy policy) const {
  DeviceModelOptions o;
  o.max_sequences = slots_;
  o.policy = policy;
  o.precision = precision_;
  o.batch_invariant = batch_invariant_;
  try {
    auto dm = make_device_model(model_, device_, o);
    log_.info("device_model", {{"device", to_string(device_)},
                               {"name", dm->description()},
                               {"precision", to_string(precision_)},
                               {"policy", to_string(policy)},
                               {"state_slots", slots_},
                               {"slot_bytes", dm->slot_bytes()}});
    return dm;
  } catch (const std::exception& e) {
    if (!cuda_available()) throw;  // no CUDA in this build or no GPU: its message says so
    throw Error(fmt::format("cannot put the model on the GPU for the {} policy with {} state slots: {} (the slots "
                            "follow --state-memory and --max-sessions; lower them to need less GPU memory)",
                            to_string(policy), slots_, e.what()));
  }
}

void Backend::prepare(ContextPolicy policy) {
  if (!on_device()) return;
  auto& dm = models_[static_cast<std::size_t>(policy)];
  if (dm) return;
  try {
    dm = make(policy);
  } catch (const std::exception& e) {
    log_.error("device_model_failed", {{"policy", to_string(policy)}, {"reason", e.what()}});
    throw ApiError(503, e.what(), "policy", "device_unavailable");
  }
}

DeviceModel& Backend::model_for(ContextPolicy policy) {
  prepare(policy);
  return *models_[static_cast<std::size_t>(policy)];
}

Sequence Backend::new_sequence(ContextPolicy policy) {
  if (!on_device()) return serve::new_sequence(model_, policy);
  Sequence s;
  s.state.policy = policy;
  s.slot = DeviceSlot(model_for(policy));
  return s;
}

void Backend::place(Sequence& seq) {
  if (!on_device() || seq.slot) return;
  DeviceSlot slot(model_for(seq.state.policy));
  slot.device()->upload(slot.slot(), seq.state);
  seq.slot = std::move(slot);
  seq.state = ModelState{{}, seq.state.policy};
}

void Backend::set_policy(Sequence& seq, ContextPolicy policy) {
  if (!seq.slot) {
    seq.state.policy = policy;
    return;
  }
  if (seq.state.policy == policy) return;
  ModelState state = host_state(seq);
  state.policy = policy;
  DeviceSlot moved(model_for(policy));
  moved.device()->upload(moved.slot(), state);
  seq.slot = std::move(moved);  // the old slot is released with `moved`
  seq.state.policy = policy;
}

std::vector<std::vector<std::size_t>> Backend::groups(std::span<const SequenceRun> batch) const {
  std::vector<std::vector<std::size_t>> out;
  if (!on_device()) {
    out.emplace_back(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i) out.back()[i] = i;
    return out;
  }
  std::map<const DeviceModel*, std::size_t> part;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const auto [it, fresh] = part.try_emplace(batch[i].seq->slot.device(), out.size());
    if (fresh) out.emplace_back();
    out[it->second].push_back(i);
  }
  return out;
}

void Backend::forward(std::span<const SequenceRun> batch, std::span<const std::size_t> group) const {
  if (!on_device()) {
    std::vector<SequenceStep> steps;
    steps.reserve(group.size());
    for (const std::size_t i : group)
      steps.push_back({&batch[i].seq->state, batch[i].tokens, batch[i].logits, &batch[i].seq->next_logits});
    model_.forward(steps, chunk_);
    return;
  }
  std::vector<DeviceStep> steps;
  steps.reserve(group.size());
  for (const std::size_t i : group)
    steps.push_back(
        {batch[i].seq->slot.slot(), batch[i].tokens, batch[i].logits, &batch[i].seq->next_logits, batch[i].sampling});
  batch[group.front()].seq->slot.device()->forward(steps);
}

}  // namespace mhla::serve
