// mhla generate: stream a completion of a prompt to stdout.
#include <cstdio>
#include <fmt/format.h>

#include "commands.hpp"
#include "mhla/error.hpp"
#include "mhla/session.hpp"
#include "model_args.hpp"

namespace mhla::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  std::string prompt_ids;
  bool no_bos = false;
  int max_tokens = 128;
  bool ignore_eos = false;
  long long chunk = 256;
  std::string policy = "strict";
  bool print_ids = false;
  std::vector<std::string> stop;
  SamplingFlags sampling;
};

void run_generate(const GenerateArgs& a) {
  const LoadedModel m = load_model(a.model);
  SessionOptions opt;
  opt.policy = parse_policy(a.policy);
  opt.prefill_chunk = a.chunk;
  opt.sampling = a.sampling.params();
  Session session(m.model, m.tokenizer_ptr(), opt);

  const std::vector<int> prompt =
      a.prompt_ids.empty() ? session.encode(a.prompt, !a.no_bos) : parse_ids(a.prompt_ids, "--prompt-ids");
  if (prompt.empty()) throw Error("the prompt is empty: give some text or token ids");
  session.append(prompt);

  StopCriteria stop;
  stop.max_tokens = a.max_tokens;
  stop.ignore_eos = a.ignore_eos;
  stop.eos_id = m.model.config().eos_token_id;
  stop.stop_strings = a.stop;
  bool first = true;
  const auto result = session.generate(stop, [&](int id, std::string_view text) {
    if (a.print_ids) {
      if (id >= 0) std::printf(first ? "%d" : " %d", id), first = false;
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
    }
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
  std::fflush(stdout);
  const auto& st = session.stats();
  std::fprintf(stderr, "mhla: %s; state %zu bytes at position %lld; seed %llu; finish: %s\n",
               timing_summary(st.prefill_tokens, st.prefill_seconds, st.decode_tokens, st.decode_seconds).c_str(),
               session.state_bytes(), session.position(),
               static_cast<unsigned long long>(session.sampler().params().seed),
               std::string(to_string(result.reason)).c_str());
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Stream a completion of a prompt to stdout");
  cmd->add_option("--model", args->model, "Model directory (config.json, model.safetensors, tokenizer.model)")
      ->required();
  auto* text = cmd->add_option("--prompt", args->prompt, "Prompt text (needs the model's tokenizer)");
  auto* ids = cmd->add_option("--prompt-ids", args->prompt_ids, "Prompt as comma-separated token ids");
  text->excludes(ids);
  cmd->add_flag("--no-bos", args->no_bos, "Do not prepend the BOS token to a text prompt");
  cmd->add_option("--max-tokens", args->max_tokens, "Most tokens to generate")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating past the end-of-sequence token");
  cmd->add_option("--chunk", args->chunk, "Prefill chunk length in tokens")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--policy", args->policy, "Past the trained window: strict (stop), slide, slide_mean")
      ->capture_default_str()
      ->check(CLI::IsMember({"strict", "slide", "slide_mean"}));
  cmd->add_flag("--print-ids", args->print_ids, "Print only the generated token ids, space-separated");
  cmd->add_option("--stop", args->stop, "Stop when this text appears (repeatable); it is not printed");
  add_sampling_flags(cmd, args->sampling);
  cmd->callback([args, text, ids] {
    if (text->count() == 0 && ids->count() == 0) throw Error("give a prompt: --prompt TEXT or --prompt-ids 1,2,3");
    run_generate(*args);
  });
}

}  // namespace mhla::cli
