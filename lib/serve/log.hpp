#pragma once
// Structured logs: one JSON object per line on stderr, {"time", "level", "event", ...fields},
// so they can be filtered and parsed without guessing at formats.
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace mhla::serve {

enum class LogLevel { debug, info, warn, error, off };
LogLevel parse_log_level(std::string_view name);  // throws mhla::Error on unknown names

class Logger {
public:
  explicit Logger(LogLevel level, std::FILE* out = stderr) : level_(level), out_(out) {}

  bool enabled(LogLevel level) const { return level >= level_ && level_ != LogLevel::off; }
  void log(LogLevel level, std::string_view event, nlohmann::json fields = nlohmann::json::object());
  void info(std::string_view event, nlohmann::json fields = nlohmann::json::object()) {
    log(LogLevel::info, event, std::move(fields));
  }
  void warn(std::string_view event, nlohmann::json fields = nlohmann::json::object()) {
    log(LogLevel::warn, event, std::move(fields));
  }
  void error(std::string_view event, nlohmann::json fields = nlohmann::json::object()) {
    log(LogLevel::error, event, std::move(fields));
  }

private:
  LogLevel level_;
  std::FILE* out_;
  std::mutex mutex_;
};

}  // namespace mhla::serve
