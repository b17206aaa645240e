// mhla generate: stream a completion of a prompt to stdout; optionally continue a saved session
// and save the session afterwards.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>

#include "commands.hpp"
#include "mhla/checkpoint.hpp"
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
  std::string save_state;
  std::string resume;
  std::string summaries = "f32";
  DeviceFlags device;
};

// A fresh session, or the saved one (verified whole before use) with the flags given on this
// command line applied on top: each sampling flag overrides only its own setting, --seed
// reseeds, --policy may go from strict to a slide policy, --chunk changes later prefills.
Session start_session(const GenerateArgs& a, const LoadedModel& m, const CLI::App& cmd,
                      std::unique_ptr<DeviceModel>& device) {
  if (a.resume.empty()) {
    SessionOptions opt;
    opt.policy = parse_policy(a.policy);
    opt.prefill_chunk = a.chunk;
    opt.sampling = a.sampling.params();
    device = open_device(m.model, a.device, opt.policy);
    opt.device = device.get();
    return Session(m.model, m.tokenizer_ptr(), opt);
  }
  const SessionSnapshot saved = read_state_file(a.resume, m.model);
  ResumeOptions ro;
  if (cmd.count("--policy")) ro.policy = parse_policy(a.policy);
  if (cmd.count("--chunk")) ro.prefill_chunk = a.chunk;
  device = open_device(m.model, a.device, ro.policy.value_or(saved.state.policy));
  ro.device = device.get();
  Session session = resume(saved, m.model, m.tokenizer_ptr(), ro);
  SamplingParams p = session.sampler().params();
  const SamplingFlags& f = a.sampling;
  if (cmd.count("--temperature")) p.temperature = f.temperature;
  if (cmd.count("--top-k")) p.top_k = f.top_k;
  if (cmd.count("--top-p")) p.top_p = f.top_p;
  if (cmd.count("--min-p")) p.min_p = f.min_p;
  if (cmd.count("--repeat-penalty")) p.repeat_penalty = f.repeat_penalty;
  session.sampler().set_params(p);
  if (f.seed) session.sampler().reseed(*f.seed);
  std::fprintf(stderr, "mhla: resumed %s at position %lld\n", a.resume.c_str(), session.position());
  return session;
}

void run_generate(const GenerateArgs& a, const CLI::App& cmd) {
  const LoadedModel m = load_model(a.model);
  const SummaryStorage summaries = parse_summary_storage(a.summaries);
  std::unique_ptr<DeviceModel> device;  // outlives the session
  Session session = start_session(a, m, cmd, device);

  // A resumed session continues mid-sequence, so its new text gets no BOS.
  std::vector<int> prompt;
  if (!a.prompt_ids.empty())
    prompt = parse_ids(a.prompt_ids, "--prompt-ids");
  else if (a.resume.empty() || !a.prompt.empty())
    prompt = session.encode(a.prompt, a.resume.empty() && !a.no_bos);
  if (prompt.empty() && a.resume.empty()) throw Error("the prompt is empty: give some text or token ids");
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
  if (!a.save_state.empty()) {
    save_session(a.save_state, session, summaries);
    std::fprintf(stderr, "mhla: saved the session to %s (%ju bytes, %s summaries)\n", a.save_state.c_str(),
                 static_cast<std::uintmax_t>(std::filesystem::file_size(a.save_state)),
                 std::string(to_string(summaries)).c_str());
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Stream a completion of a prompt to stdout");
  add_model_option(cmd, args->model);
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
  add_device_flags(cmd, args->device);
  cmd->add_option("--save-state", args->save_state, "After generating, save the session to this file");
  cmd->add_option("--resume", args->resume,
                  "Continue the session saved in this file (same model) with its saved policy, chunk and sampling "
                  "settings; each of those flags given here overrides just its setting, --seed reseeds; a prompt, "
                  "if given, is appended first (no BOS)");
  cmd->add_option("--state-summaries", args->summaries,
                  "How --save-state stores completed block summaries: f32 (exact) or bf16 (half the bytes)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd->callback([args, text, ids, cmd] {
    if (text->count() == 0 && ids->count() == 0 && args->resume.empty())
      throw Error("give a prompt: --prompt TEXT or --prompt-ids 1,2,3 (or --resume FILE to continue a saved session)");
    run_generate(*args, *cmd);
  });
}

}  // namespace mhla::cli
