#pragma once
// Everything mhla-server can be told, with its defaults. The command line and the config file
// (apps/mhla-server) fill it in; docs/http-api.md describes each field.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/options.hpp"

namespace mhla::serve {

struct ServerConfig {
  // Model and network
  std::string model_dir;
  std::string model_name;            // empty: the model directory's last component
  std::string host = "127.0.0.1";
  unsigned short port = 8080;        // 0: any free port (see port_file)
  std::string port_file;             // where the bound port is written once listening
  int io_threads = 1;
  double read_timeout_s = 30;        // to receive a whole request; also the keep-alive idle time

  // Where the model runs (lib/serve/backend.hpp)
  std::string device = "auto";       // cpu, cuda, or auto: cuda when this build has CUDA and a GPU is present
  std::string precision = "bf16";    // the GPU's weights and activations: bf16, f16 or f32 (the CPU runs f32)
  bool batch_invariant = false;      // on the GPU, a request's results do not depend on what else runs
                                     // (the CPU always is)

  // Engine
  ContextPolicy policy = ContextPolicy::strict;  // default for requests that name none
  long long prefill_chunk = 64;      // prefill piece; the prefix cache works at this granularity
  long long step_tokens = 256;       // tokens per engine step: decodes first, prefill pieces after
  std::size_t state_memory = std::size_t{1} << 30;          // resident session states and turns
  std::size_t prefix_cache_memory = std::size_t{256} << 20; // 0 turns the prefix cache off

  // Limits
  int max_sessions = 1024;           // stateful sessions, in memory and on disk
  std::size_t max_body_bytes = std::size_t{4} << 20;
  std::size_t max_upload_bytes = std::size_t{1} << 30;
  long long max_prompt_tokens = 65536;
  int max_tokens_limit = 4096;       // the most tokens one request may generate
  int default_max_tokens = 16;       // /v1/completions without max_tokens (as OpenAI)
  int max_n = 8;
  int max_turns_kept = 16;           // turn starts kept for undo and regenerate
  double idle_timeout_s = 300;       // idle sessions move to disk after this long
  double session_ttl_s = 7 * 86400;  // sessions unused this long are deleted
  std::vector<std::string> api_keys; // empty: no authentication

  // Checkpoints and persistence
  std::string state_dir = "mhla-state";
  double checkpoint_ttl_s = 7 * 86400;
  int checkpoint_quota_count = 64;   // per API key
  std::size_t checkpoint_quota_bytes = std::size_t{8} << 30;
  double drain_timeout_s = 30;       // SIGTERM: how long running streams may finish

  std::string log_level = "info";    // debug, info, warn, error, off

  // Throws mhla::Error naming the first bad field and what it must be.
  void validate() const;
};

// "512", "64KiB", "16MiB", "2GiB" (also KB, MB, GB as powers of 1000); throws mhla::Error.
std::size_t parse_byte_size(std::string_view text);

}  // namespace mhla::serve
