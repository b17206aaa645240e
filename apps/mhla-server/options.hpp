#pragma once
// mhla-server's command line and config file (CLI11): every ServerConfig field has a flag, and
// --config FILE reads the same names from a TOML/INI file (flags given on the command line win).
#include <CLI/CLI.hpp>
#include <memory>

#include "serve/config.hpp"

namespace mhla::server_app {

// Registers the options on app; call finish() after app.parse() to convert sizes and policies.
class Options {
public:
  explicit Options(CLI::App& app);
  serve::ServerConfig finish();

private:
  serve::ServerConfig config_;
  std::string policy_ = "strict";
  std::string state_memory_ = "1GiB", prefix_cache_memory_ = "256MiB", max_body_ = "4MiB", max_upload_ = "1GiB",
              quota_bytes_ = "8GiB";
  std::string api_keys_file_;
};

}  // namespace mhla::server_app
