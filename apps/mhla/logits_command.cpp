// mhla logits: every position's logits for a list of token ids, to a safetensors file.
#include <cstdio>
#include <fmt/format.h>

#include "commands.hpp"
#include "mhla/error.hpp"
#include "mhla/safetensors.hpp"
#include "model_args.hpp"

namespace mhla::cli {

namespace {

struct LogitsArgs {
  std::string model, ids, output, mode = "prefill", policy = "strict";
  long long chunk = 256;
  DeviceFlags device;
};

void run_logits(const LogitsArgs& a) {
  const LoadedModel m = load_model(a.model);
  const auto ids = parse_ids(a.ids, "--ids");
  const auto V = static_cast<size_t>(m.model.config().vocab_size);
  const ContextPolicy policy = parse_policy(a.policy);
  ModelState state = m.model.new_state(policy);
  std::vector<float> logits;
  if (const auto device = open_device(m.model, a.device, policy)) {
    const DeviceSlot slot(*device);
    if (a.mode == "prefill") {
      const DeviceStep step{slot.slot(), ids, LogitsMode::all, &logits};
      device->forward({&step, 1});
    } else {
      std::vector<float> one;
      for (const int& id : ids) {
        const DeviceStep step{slot.slot(), {&id, 1}, LogitsMode::last, &one};
        device->forward({&step, 1});
        logits.insert(logits.end(), one.begin(), one.end());
      }
    }
  } else if (a.mode == "prefill") {
    const SequenceStep step{&state, ids, LogitsMode::all, &logits};
    m.model.forward({&step, 1}, a.chunk);
  } else {
    std::vector<float> one;
    for (const int& id : ids) {
      const SequenceStep step{&state, {&id, 1}, LogitsMode::last, &one};
      m.model.forward({&step, 1});
      logits.insert(logits.end(), one.begin(), one.end());
    }
  }
  std::map<std::string, TensorToWrite> out;
  out["logits"] = {{static_cast<int64_t>(ids.size()), static_cast<int64_t>(V)}, std::move(logits)};
  write_safetensors(a.output, out, {{"mode", a.mode}, {"ids", a.ids}});
  std::fprintf(stderr, "mhla: wrote logits [%zu, %zu] to %s\n", ids.size(), V, a.output.c_str());
}

}  // namespace

void add_logits_command(CLI::App& app) {
  auto args = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand("logits", "Write the logits of every position of a token sequence");
  cmd->add_option("--model", args->model, "Model directory")->required();
  cmd->add_option("--ids", args->ids, "Token ids, comma-separated")->required();
  cmd->add_option("--output", args->output, "Output safetensors file: logits [T, vocab] F32")->required();
  cmd->add_option("--mode", args->mode, "prefill (chunked) or decode (one token at a time)")
      ->capture_default_str()
      ->check(CLI::IsMember({"prefill", "decode"}));
  cmd->add_option("--chunk", args->chunk, "Prefill chunk length")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--policy", args->policy, "strict, slide or slide_mean")
      ->capture_default_str()
      ->check(CLI::IsMember({"strict", "slide", "slide_mean"}));
  add_device_flags(cmd, args->device);
  cmd->callback([args] { run_logits(*args); });
}

}  // namespace mhla::cli
