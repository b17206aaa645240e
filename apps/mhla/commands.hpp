#pragma once
// Each subcommand of `mhla` registers itself on the top-level CLI11 app. A command's callback
// throws mhla::Error (or std::exception) on failure; main turns that into one line on stderr
// and exit status 1.
#include <CLI/CLI.hpp>

namespace mhla::cli {

void add_op_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_chat_command(CLI::App& app);
void add_logits_command(CLI::App& app);
void add_perplexity_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_state_command(CLI::App& app);
void add_longbench_command(CLI::App& app);
void add_passkey_command(CLI::App& app);

}  // namespace mhla::cli
