#include "serve/config.hpp"

#include <charconv>
#include <fmt/format.h>
#include <utility>

#include "mhla/error.hpp"

namespace mhla::serve {

void ServerConfig::validate() const {
  const auto positive = [](const char* name, auto value) {
    if (value <= 0) throw Error(fmt::format("{} must be positive, got {}", name, value));
  };
  if (model_dir.empty()) throw Error("no model: give --model DIR (a research-layout model directory)");
  positive("--io-threads", io_threads);
  positive("--read-timeout", read_timeout_s);
  positive("--prefill-chunk", prefill_chunk);
  positive("--step-tokens", step_tokens);
  positive("--max-sessions", max_sessions);
  positive("--max-body-bytes", max_body_bytes);
  positive("--max-upload-bytes", max_upload_bytes);
  positive("--max-prompt-tokens", max_prompt_tokens);
  positive("--max-tokens-limit", max_tokens_limit);
  positive("--default-max-tokens", default_max_tokens);
  positive("--max-n", max_n);
  positive("--idle-timeout", idle_timeout_s);
  positive("--session-ttl", session_ttl_s);
  positive("--checkpoint-ttl", checkpoint_ttl_s);
  positive("--checkpoint-quota-count", checkpoint_quota_count);
  positive("--checkpoint-quota-bytes", checkpoint_quota_bytes);
  if (max_turns_kept < 0) throw Error(fmt::format("--max-turns-kept must be 0 or more, got {}", max_turns_kept));
  if (drain_timeout_s < 0) throw Error(fmt::format("--drain-timeout must be 0 or more, got {}", drain_timeout_s));
  if (step_tokens < prefill_chunk)
    throw Error(fmt::format("--step-tokens ({}) must be at least --prefill-chunk ({}), so a step holds a whole piece",
                            step_tokens, prefill_chunk));
  if (default_max_tokens > max_tokens_limit)
    throw Error(fmt::format("--default-max-tokens ({}) exceeds --max-tokens-limit ({})", default_max_tokens,
                            max_tokens_limit));
  if (state_dir.empty()) throw Error("--state-dir must name a directory");
  for (const auto& key : api_keys)
    if (key.empty() || key.find_first_of(" \t\r\n") != std::string::npos)
      throw Error("an API key is empty or holds whitespace; keys are single words");
  if (device != "cpu" && device != "cuda" && device != "auto")
    throw Error(fmt::format("--device must be cpu, cuda or auto, got '{}'", device));
  if (precision != "bf16" && precision != "f16" && precision != "f32")
    throw Error(fmt::format("--precision must be bf16, f16 or f32, got '{}'", precision));
  if (log_level != "debug" && log_level != "info" && log_level != "warn" && log_level != "error" && log_level != "off")
    throw Error(fmt::format("--log-level must be debug, info, warn, error or off, got '{}'", log_level));
}

std::size_t parse_byte_size(std::string_view text) {
  std::size_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end == text.data())
    throw Error(fmt::format("'{}' is not a byte size: write a number with an optional unit (KiB, MiB, GiB, KB, MB, GB)",
                            text));
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  static const std::pair<std::string_view, std::size_t> units[] = {
      {"", 1},          {"B", 1},           {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30},
      {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull}};
  for (const auto& [name, scale] : units)
    if (unit == name) {
      if (value > SIZE_MAX / scale) throw Error(fmt::format("byte size '{}' is too large", text));
      return value * scale;
    }
  throw Error(fmt::format("unknown unit '{}' in byte size '{}': use KiB, MiB, GiB, KB, MB or GB", unit, text));
}

}  // namespace mhla::serve
