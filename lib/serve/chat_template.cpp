#include "serve/chat_template.hpp"

#include <filesystem>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mhla/chat_format.hpp"
#include "mhla/error.hpp"
#include "serve/files.hpp"

namespace mhla::serve {

namespace {

constexpr std::string_view kPlaceholder = "{content}";

std::string fill(const std::string& pattern, const std::string& content) {
  std::string out = pattern;
  const auto at = out.find(kPlaceholder);
  if (at != std::string::npos) out.replace(at, kPlaceholder.size(), content);
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::default_template() {
  ChatTemplate t;
  t.system_ = "System: {content}\n";
  t.user_first_ = chat_user_turn(kPlaceholder, true);
  t.user_ = chat_user_turn(kPlaceholder, false);
  t.assistant_ = " {content}";
  t.assistant_prompt_ = "\nAssistant:";
  t.stop_ = chat_stop_strings();
  t.add_bos_ = true;
  t.source_ = "default";
  return t;
}

ChatTemplate ChatTemplate::for_model(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "chat_template.json").string();
  ChatTemplate t = default_template();
  if (!std::filesystem::exists(path)) return t;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{} is not valid JSON: {}", path, e.what()));
  }
  if (!j.is_object()) throw Error(fmt::format("{} must hold a JSON object", path));
  const std::pair<const char*, std::string*> texts[] = {{"system", &t.system_},
                                                        {"user_first", &t.user_first_},
                                                        {"user", &t.user_},
                                                        {"assistant", &t.assistant_},
                                                        {"assistant_prompt", &t.assistant_prompt_}};
  for (const auto& [key, field] : texts) {
    if (!j.contains(key)) continue;
    if (!j[key].is_string()) throw Error(fmt::format("{}: \"{}\" must be a string", path, key));
    *field = j[key].get<std::string>();
  }
  if (j.contains("stop")) {
    if (!j["stop"].is_array()) throw Error(fmt::format("{}: \"stop\" must be an array of strings", path));
    t.stop_.clear();
    for (const auto& s : j["stop"]) {
      if (!s.is_string() || s.get<std::string>().empty())
        throw Error(fmt::format("{}: \"stop\" must hold non-empty strings", path));
      t.stop_.push_back(s.get<std::string>());
    }
  }
  if (j.contains("add_bos")) {
    if (!j["add_bos"].is_boolean()) throw Error(fmt::format("{}: \"add_bos\" must be true or false", path));
    t.add_bos_ = j["add_bos"].get<bool>();
  }
  t.source_ = path;
  return t;
}

std::string ChatTemplate::render(std::span<const ChatMessage> messages, bool has_user_turn,
                                 bool generation_follows) const {
  std::string text;
  for (const auto& m : messages) {
    if (m.role == "system") {
      text += fill(system_, m.content);
    } else if (m.role == "user") {
      text += fill(has_user_turn ? user_ : user_first_, m.content);
      has_user_turn = true;
    } else {
      text += fill(assistant_, m.content);
    }
  }
  if (generation_follows && !messages.empty() && messages.back().role != "user") text += assistant_prompt_;
  return text;
}

}  // namespace mhla::serve
