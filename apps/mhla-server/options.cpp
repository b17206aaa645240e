#include "options.hpp"

#include <fmt/format.h>
#include <fstream>

#include "mhla/error.hpp"

namespace mhla::server_app {

Options::Options(CLI::App& app) {
  auto& c = config_;
  app.set_config("--config", "", "Read options from a TOML/INI file: the long option names as keys "
                                 "(port = 8080, state-memory = \"4GiB\", api-key = [\"k1\", \"k2\"])");
  app.add_option("--model", c.model_dir, "Model directory (config.json, model.safetensors, optional tokenizer.model "
                                         "and chat_template.json)")
      ->required();
  app.add_option("--model-name", c.model_name, "Name reported by /v1/models and in responses (default: the "
                                               "directory's name)");
  app.add_option("--host", c.host, "Address to listen on; 127.0.0.1 keeps the server to this machine")
      ->capture_default_str();
  app.add_option("--port", c.port, "TCP port; 0 picks a free one (see --port-file)")->capture_default_str();
  app.add_option("--port-file", c.port_file, "Write the bound port to this file once listening");
  app.add_option("--io-threads", c.io_threads, "Threads serving connections")->capture_default_str();
  app.add_option("--read-timeout", c.read_timeout_s, "Seconds to receive a request; also the keep-alive idle time")
      ->capture_default_str();
  app.add_option("--device", c.device, "Where the model runs: cpu, cuda, or auto (cuda when this build has CUDA and "
                                      "a GPU is present)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  app.add_option("--precision", c.precision,
                 "Weights and activations on the GPU: bf16, f16 (more precise, values up to 65504), or f32 (the exact "
                 "path); the CPU runs f32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  app.add_flag("--batch-invariant", c.batch_invariant,
               "On the GPU, compute every sequence's decode step as if it ran alone, so a request's results do not "
               "depend on what else the server is running (slower at larger batches; the CPU always is)");
  app.add_option("--policy", policy_, "Default context policy past the trained window: strict, slide or slide_mean")
      ->capture_default_str()
      ->check(CLI::IsMember({"strict", "slide", "slide_mean"}));
  app.add_option("--prefill-chunk", c.prefill_chunk, "Tokens per prefill piece (and prefix-cache granularity)")
      ->capture_default_str();
  app.add_option("--step-tokens", c.step_tokens, "Token budget of one engine step: every decode, then prefill pieces")
      ->capture_default_str();
  app.add_option("--state-memory", state_memory_, "Memory for session states, turn starts and running requests; "
                                                  "past it idle sessions go to disk (e.g. 512MiB, 4GiB)")
      ->capture_default_str();
  app.add_option("--prefix-cache-memory", prefix_cache_memory_, "Memory for cached prefix states; 0 turns the "
                                                                "prefix cache off")
      ->capture_default_str();
  app.add_option("--max-sessions", c.max_sessions, "Most sessions, in memory and on disk")->capture_default_str();
  app.add_option("--max-body-bytes", max_body_, "Largest request body")->capture_default_str();
  app.add_option("--max-upload-bytes", max_upload_, "Largest checkpoint upload")->capture_default_str();
  app.add_option("--max-prompt-tokens", c.max_prompt_tokens, "Most input tokens in one request")->capture_default_str();
  app.add_option("--max-tokens-limit", c.max_tokens_limit, "Most tokens one request may generate")
      ->capture_default_str();
  app.add_option("--default-max-tokens", c.default_max_tokens, "max_tokens when a completion or session request "
                                                               "gives none (chat: --max-tokens-limit)")
      ->capture_default_str();
  app.add_option("--max-n", c.max_n, "Largest n (choices per request)")->capture_default_str();
  app.add_option("--max-turns-kept", c.max_turns_kept, "Turn starts kept per session for undo and regenerate")
      ->capture_default_str();
  app.add_option("--idle-timeout", c.idle_timeout_s, "Seconds before an idle session is written to disk and "
                                                     "leaves memory")
      ->capture_default_str();
  app.add_option("--session-ttl", c.session_ttl_s, "Seconds before an unused session is deleted")
      ->capture_default_str();
  app.add_option("--api-key", c.api_keys, "Accept this key (Authorization: Bearer KEY); repeat for more. Without "
                                          "keys there is no authentication");
  app.add_option("--api-keys-file", api_keys_file_, "Accept the keys in this file, one per line");
  app.add_option("--state-dir", c.state_dir, "Directory for checkpoints and sessions on disk")->capture_default_str();
  app.add_option("--checkpoint-ttl", c.checkpoint_ttl_s, "Seconds before a checkpoint expires")->capture_default_str();
  app.add_option("--checkpoint-quota-count", c.checkpoint_quota_count, "Most checkpoints per API key")
      ->capture_default_str();
  app.add_option("--checkpoint-quota-bytes", quota_bytes_, "Most checkpoint bytes per API key")->capture_default_str();
  app.add_option("--drain-timeout", c.drain_timeout_s, "On SIGTERM, seconds running requests may take to finish")
      ->capture_default_str();
  app.add_option("--log-level", c.log_level, "debug, info, warn, error or off (JSON lines on stderr)")
      ->capture_default_str();
}

serve::ServerConfig Options::finish() {
  auto& c = config_;
  c.policy = parse_policy(policy_);
  c.state_memory = serve::parse_byte_size(state_memory_);
  c.prefix_cache_memory = serve::parse_byte_size(prefix_cache_memory_);
  c.max_body_bytes = serve::parse_byte_size(max_body_);
  c.max_upload_bytes = serve::parse_byte_size(max_upload_);
  c.checkpoint_quota_bytes = serve::parse_byte_size(quota_bytes_);
  if (!api_keys_file_.empty()) {
    std::ifstream in(api_keys_file_);
    if (!in) throw Error(fmt::format("cannot read the API keys file {}", api_keys_file_));
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty() && line.front() != '#') c.api_keys.push_back(line);
    }
  }
  c.validate();
  return c;
}

}  // namespace mhla::server_app
