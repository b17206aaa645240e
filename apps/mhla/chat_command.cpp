// mhla chat: an interactive terminal conversation. The session keeps its state between turns,
// so each turn prefills only the new text (the timing line after each reply shows it).
#include <cstdio>
#include <fmt/format.h>
#include <iostream>

#include "commands.hpp"
#include "mhla/chat_format.hpp"
#include "mhla/error.hpp"
#include "mhla/session.hpp"
#include "model_args.hpp"

namespace mhla::cli {

namespace {

struct ChatArgs {
  std::string model, policy = "slide_mean";
  int max_tokens = 256;
  long long chunk = 256;
  SamplingFlags sampling;
  DeviceFlags device;
};

void run_chat(const ChatArgs& a) {
  const LoadedModel m = load_model(a.model);
  if (!m.tokenizer)
    throw Error(fmt::format("chat needs a tokenizer: {} has no tokenizer.model", m.model.directory()));
  SessionOptions opt;
  opt.policy = parse_policy(a.policy);
  opt.prefill_chunk = a.chunk;
  opt.sampling = a.sampling.params();
  const auto device = open_device(m.model, a.device, opt.policy);
  opt.device = device.get();
  Session session(m.model, m.tokenizer_ptr(), opt);
  StopCriteria stop;
  stop.max_tokens = a.max_tokens;
  stop.eos_id = m.model.config().eos_token_id;
  stop.stop_strings = chat_stop_strings();

  std::fprintf(stderr, "mhla chat: type a message and press Enter; an empty line or end of input quits.\n");
  std::string line;
  bool first = true;
  while (true) {
    std::fputs("you> ", stdout);
    std::fflush(stdout);
    if (!std::getline(std::cin, line) || line.empty()) break;
    const auto before = session.stats();
    session.append(session.encode(chat_user_turn(line, first), first));
    first = false;
    std::fputs("model>", stdout);
    const auto result = session.generate(stop, [](int, std::string_view text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputs("\n", stdout);
    const auto& st = session.stats();
    std::fprintf(stderr, "[%s; position %lld; state %zu bytes; finish: %s]\n",
                 timing_summary(st.prefill_tokens - before.prefill_tokens, st.prefill_seconds - before.prefill_seconds,
                                st.decode_tokens - before.decode_tokens, st.decode_seconds - before.decode_seconds)
                     .c_str(),
                 session.position(), session.state_bytes(), std::string(to_string(result.reason)).c_str());
    if (result.reason == StopReason::length && session.policy() == ContextPolicy::strict &&
        session.position() >= m.model.trained_window()) {
      std::fprintf(stderr, "mhla chat: the conversation filled the trained window; start chat with --policy "
                           "slide_mean to go on past it\n");
      break;
    }
  }
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto args = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand("chat", "Chat in the terminal, keeping the session state between turns");
  add_model_option(cmd, args->model);
  cmd->add_option("--policy", args->policy, "Past the trained window: strict, slide or slide_mean")
      ->capture_default_str()
      ->check(CLI::IsMember({"strict", "slide", "slide_mean"}));
  cmd->add_option("--max-tokens", args->max_tokens, "Most tokens per reply")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--chunk", args->chunk, "Prefill chunk length")->capture_default_str()->check(CLI::PositiveNumber);
  add_sampling_flags(cmd, args->sampling);
  add_device_flags(cmd, args->device);
  cmd->callback([args] { run_chat(*args); });
}

}  // namespace mhla::cli
