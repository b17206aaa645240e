// mhla passkey: pass-key retrieval accuracy per document length and context policy, with the
// prefill speed, on documents generated from a fixed seed.
#include <charconv>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "mhla/error.hpp"
#include "mhla/eval_passkey.hpp"
#include "model_args.hpp"

namespace mhla::cli {

namespace {

struct PasskeyArgs {
  std::string model, lengths = "1K,2K,4K,8K,16K,32K", policies = "strict,slide,slide_mean", output;
  int trials = 5;
  std::uint64_t seed = 1234;
  long long chunk = 256;
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    out.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

// "4K" -> 4096, "512" -> 512 (K = 1024 tokens).
long long parse_length(const std::string& item) {
  long long value = 0;
  const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
  std::string_view unit(ptr, static_cast<size_t>(item.data() + item.size() - ptr));
  const long long scale = unit.empty()                   ? 1
                          : (unit == "K" || unit == "k") ? 1024
                          : (unit == "M" || unit == "m") ? 1 << 20
                                                         : 0;
  if (item.empty() || ec != std::errc() || scale == 0 || value <= 0)
    throw Error(fmt::format("--lengths: '{}' is not a length (expected tokens like 512, 4K or 1M)", item));
  return value * scale;
}

std::string length_name(long long n) { return n % 1024 == 0 ? fmt::format("{}K", n / 1024) : std::to_string(n); }

void run_passkey_command(const PasskeyArgs& a) {
  eval::PasskeyOptions options;
  for (const auto& item : split(a.lengths)) options.lengths.push_back(parse_length(item));
  for (const auto& item : split(a.policies)) options.policies.push_back(parse_policy(item));
  options.trials = a.trials;
  options.seed = a.seed;
  options.prefill_chunk = a.chunk;
  const LoadedModel m = load_model(a.model);
  if (!m.tokenizer)
    throw Error(fmt::format("passkey needs a tokenizer: {} has no tokenizer.model", m.model.directory()));

  const auto trials = eval::run_passkey(m.model, *m.tokenizer, options, [](const eval::PasskeyTrial& t) {
    if (t.refused) return;
    std::fprintf(stderr, "mhla: %s %s trial %d: key %s at depth %.2f, answer '%s' %s (%lld tokens, %.2f s)\n",
                 length_name(t.length).c_str(), std::string(to_string(t.policy)).c_str(), t.trial, t.key.c_str(),
                 t.depth, t.answer.c_str(), t.correct ? "right" : "wrong", t.prompt_tokens, t.prefill_seconds);
  });
  const auto cells = eval::summarize_passkey(options, trials);

  std::string table = fmt::format(
      "model {}, {} trials per length, seed {}, trained window {} tokens, prefill on the "
      "CPU in chunks of {}\n\n| length |",
      m.model.directory(), a.trials, a.seed, m.model.trained_window(), a.chunk);
  for (const auto p : options.policies) table += fmt::format(" {} |", to_string(p));
  table += " prefill tok/s |\n|---|";
  for (size_t i = 0; i <= options.policies.size(); ++i) table += "---|";
  table += "\n";
  for (const long long length : options.lengths) {
    table += fmt::format("| {} |", length_name(length));
    long long tokens = 0;
    double seconds = 0;
    for (const auto& c : cells) {
      if (c.length != length) continue;
      table += c.refused ? " refused |"
                         : fmt::format(" {:.2f} ({}/{}) |", double(c.correct) / c.trials, c.correct, c.trials);
      tokens += c.prefill_tokens;
      seconds += c.prefill_seconds;
    }
    table += seconds > 0 ? fmt::format(" {:.0f} |\n", double(tokens) / seconds) : " - |\n";
  }
  std::fputs(table.c_str(), stdout);

  if (!a.output.empty()) {
    nlohmann::json j = {{"model", m.model.directory()},
                        {"trials", a.trials},
                        {"seed", a.seed},
                        {"trained_window", m.model.trained_window()},
                        {"prefill_chunk", a.chunk}};
    for (const auto& c : cells)
      j["cells"].push_back({{"length", c.length},
                            {"policy", to_string(c.policy)},
                            {"trials", c.trials},
                            {"correct", c.correct},
                            {"refused", c.refused},
                            {"prefill_tokens", c.prefill_tokens},
                            {"prefill_seconds", c.prefill_seconds}});
    for (const auto& t : trials)
      j["runs"].push_back({{"length", t.length},
                           {"trial", t.trial},
                           {"policy", to_string(t.policy)},
                           {"key", t.key},
                           {"depth", t.depth},
                           {"prompt_tokens", t.prompt_tokens},
                           {"refused", t.refused},
                           {"answer", t.answer},
                           {"correct", t.correct},
                           {"prefill_seconds", t.prefill_seconds}});
    std::ofstream out(a.output, std::ios::binary);
    out << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    if (!out) throw Error(fmt::format("cannot write {}", a.output));
  }
}

}  // namespace

void add_passkey_command(CLI::App& app) {
  auto args = std::make_shared<PasskeyArgs>();
  CLI::App* cmd = app.add_subcommand("passkey", "Pass-key retrieval accuracy per document length and context policy");
  add_model_option(cmd, args->model);
  cmd->add_option("--lengths", args->lengths, "Document lengths in tokens, comma-separated (K = 1024)")
      ->capture_default_str();
  cmd->add_option("--policy", args->policies, "Context policies, comma-separated: strict, slide, slide_mean")
      ->capture_default_str();
  cmd->add_option("--trials", args->trials, "Documents per length")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", args->seed, "Seed of the keys and their depths")->capture_default_str();
  cmd->add_option("--chunk", args->chunk, "Prefill chunk length")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--output", args->output, "Write every trial and the table's cells to this JSON file");
  cmd->callback([args] { run_passkey_command(*args); });
}

}  // namespace mhla::cli
