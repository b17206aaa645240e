// mhla state inspect: what a saved session holds and whether each section is intact.
#include <cstdio>
#include <fmt/format.h>
#include <memory>

#include "commands.hpp"
#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"

namespace mhla::cli {

namespace {

void run_inspect(const std::string& path) {
  const StateFileReport r = inspect_state_file(path);
  fmt::print("{}: {} bytes, state format version {}\n", path, r.file_bytes, r.version);
  for (const auto& s : r.sections) {
    fmt::print("  {:<4}  offset {:>10}  {:>10} bytes  checksum {}\n", s.tag, s.offset, s.bytes,
               s.checksum_ok ? "ok" : "BAD");
    for (const auto& line : s.details) fmt::print("        {}\n", line);
  }
  for (const auto& line : r.summary) fmt::print("{}\n", line);
  std::fflush(stdout);
  if (!r.ok()) throw Error(r.problem);
}

}  // namespace

void add_state_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("state", "Saved sessions (mhla generate --save-state)");
  cmd->require_subcommand(1);
  auto path = std::make_shared<std::string>();
  CLI::App* inspect = cmd->add_subcommand(
      "inspect", "Show a state file's model, position, sizes and options, and whether each checksum holds");
  inspect->add_option("file", *path, "State file")->required();
  inspect->callback([path] { run_inspect(*path); });
}

}  // namespace mhla::cli
