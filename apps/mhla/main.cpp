// mhla: the command-line front end. Each subcommand lives in its own file (commands.hpp).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"mhla: the MHLA (Multi-Head Linear Attention) inference engine"};
  app.require_subcommand(1);
  mhla::cli::add_generate_command(app);
  mhla::cli::add_chat_command(app);
  mhla::cli::add_logits_command(app);
  mhla::cli::add_perplexity_command(app);
  mhla::cli::add_inspect_command(app);
  mhla::cli::add_op_command(app);
  mhla::cli::add_state_command(app);
  mhla::cli::add_longbench_command(app);
  mhla::cli::add_passkey_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "mhla: error: %s (see mhla --help)\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mhla: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
