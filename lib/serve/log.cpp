#include "serve/log.hpp"

#include <chrono>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include "mhla/error.hpp"

namespace mhla::serve {

LogLevel parse_log_level(std::string_view name) {
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warn") return LogLevel::warn;
  if (name == "error") return LogLevel::error;
  if (name == "off") return LogLevel::off;
  throw Error(fmt::format("unknown log level '{}': use debug, info, warn, error or off", name));
}

void Logger::log(LogLevel level, std::string_view event, nlohmann::json fields) {
  if (!enabled(level)) return;
  static constexpr const char* names[] = {"debug", "info", "warn", "error"};
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  nlohmann::json line = {{"time", fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", fmt::gmtime(std::chrono::system_clock::to_time_t(now)), ms)},
                         {"level", names[static_cast<int>(level)]},
                         {"event", event}};
  for (auto& [k, v] : fields.items()) line[k] = std::move(v);
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard lock(mutex_);
  std::fwrite(text.data(), 1, text.size(), out_);
  std::fflush(out_);
}

}  // namespace mhla::serve
