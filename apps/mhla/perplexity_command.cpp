// mhla perplexity: exp(mean negative log-likelihood) of a text file, in windows of --context
// tokens, each starting with BOS.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <sstream>

#include "commands.hpp"
#include "mhla/error.hpp"
#include "model_args.hpp"

namespace mhla::cli {

namespace {

struct PerplexityArgs {
  std::string model, text, policy = "strict";
  long long context = 0;
  long long chunk = 256;
  DeviceFlags device;
};

void run_perplexity(const PerplexityArgs& a) {
  const LoadedModel m = load_model(a.model);
  if (!m.tokenizer) throw Error(fmt::format("perplexity needs a tokenizer: {} has no tokenizer.model", a.model));
  std::ifstream in(a.text, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}", a.text));
  std::ostringstream ss;
  ss << in.rdbuf();
  const auto ids = m.tokenizer->encode(ss.str(), false);
  const long long context = a.context > 0 ? a.context : m.model.trained_window();
  if (context < 2) throw Error("--context must be at least 2 tokens");
  const auto V = static_cast<size_t>(m.model.config().vocab_size);
  const int bos = m.model.config().bos_token_id;
  const ContextPolicy policy = parse_policy(a.policy);
  const auto device = open_device(m.model, a.device, policy);

  double nll = 0;
  long long scored = 0, windows = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t at = 0; at < ids.size(); at += static_cast<size_t>(context - 1)) {
    std::vector<int> window = {bos};
    const size_t n = std::min(ids.size() - at, static_cast<size_t>(context - 1));
    window.insert(window.end(), ids.begin() + static_cast<long>(at), ids.begin() + static_cast<long>(at + n));
    std::vector<float> logits;
    if (device) {
      const DeviceSlot slot(*device);
      const DeviceStep step{slot.slot(), window, LogitsMode::all, &logits};
      device->forward({&step, 1});
    } else {
      ModelState state = m.model.new_state(policy);
      const SequenceStep step{&state, window, LogitsMode::all, &logits};
      m.model.forward({&step, 1}, a.chunk);
    }
    for (size_t t = 0; t + 1 < window.size(); ++t) {
      const float* row = logits.data() + t * V;
      double mx = row[0];
      for (size_t j = 1; j < V; ++j) mx = std::max(mx, static_cast<double>(row[j]));
      double sum = 0;
      for (size_t j = 0; j < V; ++j) sum += std::exp(row[j] - mx);
      nll += mx + std::log(sum) - row[window[t + 1]];
      ++scored;
    }
    ++windows;
  }
  if (scored == 0) throw Error(fmt::format("{} holds no tokens to score", a.text));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("perplexity: {:.4f} over {} tokens in {} windows of at most {} tokens\n", std::exp(nll / scored), scored,
             windows, context);
  std::fprintf(stderr, "mhla: %lld tokens in %.1f ms (%.0f tok/s)\n", scored + windows, secs * 1e3,
               static_cast<double>(scored + windows) / secs);
}

}  // namespace

void add_perplexity_command(CLI::App& app) {
  auto args = std::make_shared<PerplexityArgs>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file under the model");
  cmd->add_option("--model", args->model, "Model directory (with tokenizer.model)")->required();
  cmd->add_option("--text", args->text, "Text file")->required();
  cmd->add_option("--context", args->context, "Window length in tokens (default: the trained window)");
  cmd->add_option("--chunk", args->chunk, "Prefill chunk length")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--policy", args->policy, "strict, slide or slide_mean (for windows past the trained one)")
      ->capture_default_str()
      ->check(CLI::IsMember({"strict", "slide", "slide_mean"}));
  add_device_flags(cmd, args->device);
  cmd->callback([args] { run_perplexity(*args); });
}

}  // namespace mhla::cli
