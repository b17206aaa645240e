#include "serve/request_fields.hpp"

#include <cmath>
#include <fmt/format.h>

#include "mhla/error.hpp"
#include "serve/ids.hpp"

namespace mhla::serve {

namespace {

const nlohmann::json* field(const nlohmann::json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string type_name(const nlohmann::json& v) { return v.type_name(); }

}  // namespace

nlohmann::json parse_body(const std::string& body) {
  if (body.empty()) return nlohmann::json::object();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body);
  } catch (const nlohmann::json::parse_error& e) {
    throw bad_request(fmt::format("the body is not valid JSON ({}); send a JSON object", e.what()));
  }
  if (!j.is_object()) throw bad_request(fmt::format("the body must be a JSON object, not {}", type_name(j)));
  return j;
}

std::optional<bool> opt_bool(const nlohmann::json& body, const char* name) {
  const auto* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw bad_request(fmt::format("'{}' must be true or false, not {}", name, type_name(*v)), name);
  return v->get<bool>();
}

std::optional<long long> opt_int(const nlohmann::json& body, const char* name, long long min, long long max) {
  const auto* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw bad_request(fmt::format("'{}' must be an integer, not {}", name, type_name(*v)), name);
  if (v->is_number_unsigned() && v->get<unsigned long long>() > static_cast<unsigned long long>(max))
    throw bad_request(fmt::format("'{}' must be between {} and {}", name, min, max), name);
  const long long x = v->get<long long>();
  if (x < min || x > max) throw bad_request(fmt::format("'{}' must be between {} and {}, got {}", name, min, max, x), name);
  return x;
}

std::optional<double> opt_number(const nlohmann::json& body, const char* name, double min, double max) {
  const auto* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw bad_request(fmt::format("'{}' must be a number, not {}", name, type_name(*v)), name);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < min || x > max)
    throw bad_request(fmt::format("'{}' must be between {} and {}, got {}", name, min, max, x), name);
  return x;
}

std::optional<std::string> opt_string(const nlohmann::json& body, const char* name) {
  const auto* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw bad_request(fmt::format("'{}' must be a string, not {}", name, type_name(*v)), name);
  return v->get<std::string>();
}

std::vector<int> token_ids(const nlohmann::json& value, const char* name, int vocab) {
  if (!value.is_array()) throw bad_request(fmt::format("'{}' must be an array of token ids", name), name);
  std::vector<int> ids;
  ids.reserve(value.size());
  for (const auto& v : value) {
    if (!v.is_number_integer())
      throw bad_request(fmt::format("'{}' must hold integer token ids, not {}", name, type_name(v)), name);
    const long long id = v.get<long long>();
    if (id < 0 || id >= vocab || (v.is_number_unsigned() && v.get<unsigned long long>() >= static_cast<unsigned long long>(vocab)))
      throw bad_request(fmt::format("token id {} in '{}' is outside the vocabulary of {} tokens", v.dump(), name, vocab),
                        name);
    ids.push_back(static_cast<int>(id));
  }
  return ids;
}

std::vector<ChatMessage> chat_messages(const nlohmann::json& value, const char* name) {
  if (!value.is_array()) throw bad_request(fmt::format("'{}' must be an array of messages", name), name);
  std::vector<ChatMessage> out;
  for (const auto& m : value) {
    if (!m.is_object()) throw bad_request(fmt::format("each of '{}' must be an object with role and content", name), name);
    const auto role = opt_string(m, "role");
    if (!role) throw bad_request(fmt::format("a message in '{}' has no role", name), name);
    std::string r = *role == "developer" ? "system" : *role;
    if (r != "system" && r != "user" && r != "assistant")
      throw bad_request(fmt::format("message role '{}' is not supported: use system, user or assistant", *role), name);
    std::string content;
    const auto* c = field(m, "content");
    if (c && c->is_string()) {
      content = c->get<std::string>();
    } else if (c && c->is_array()) {
      for (const auto& part : *c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          throw bad_request(fmt::format("message content parts in '{}' must be {{\"type\": \"text\", \"text\": ...}}", name),
                            name);
        content += part["text"].get<std::string>();
      }
    } else if (c || r != "assistant") {
      throw bad_request(fmt::format("a {} message in '{}' needs string content", r, name), name);
    }
    out.push_back({std::move(r), std::move(content)});
  }
  return out;
}

std::optional<ContextPolicy> opt_policy(const nlohmann::json& body) {
  const auto name = opt_string(body, "policy");
  if (!name) return std::nullopt;
  try {
    return parse_policy(*name);
  } catch (const Error&) {
    throw bad_request(fmt::format("'policy' must be strict, slide or slide_mean, got '{}'", *name), "policy");
  }
}

GenerationRequest generation_request(const nlohmann::json& body, const ServerConfig& config, int eos_id, bool chat,
                                     int default_max_tokens, bool default_stream) {
  GenerationRequest r;
  GenerationSpec& g = r.spec;
  g.chat = chat;
  const auto refuse_unless = [&](const char* name, bool ok, const char* what) {
    if (!ok) throw bad_request(fmt::format("'{}' is not supported by this server: {}", name, what), name);
  };
  for (const char* penalty : {"presence_penalty", "frequency_penalty"})
    refuse_unless(penalty, opt_number(body, penalty, -2, 2).value_or(0) == 0, "leave it 0 (see repetition_penalty)");
  refuse_unless("logit_bias", !field(body, "logit_bias") || body["logit_bias"].empty(), "leave it out");
  refuse_unless("echo", !opt_bool(body, "echo").value_or(false), "leave it false");
  refuse_unless("suffix", !field(body, "suffix"), "leave it out");
  refuse_unless("tools", !field(body, "tools"), "this server does not call tools");

  auto max_tokens = opt_int(body, "max_tokens", 1, config.max_tokens_limit);
  if (!max_tokens) max_tokens = opt_int(body, "max_completion_tokens", 1, config.max_tokens_limit);
  g.stop.max_tokens = static_cast<int>(max_tokens.value_or(default_max_tokens));
  g.stop.eos_id = eos_id;
  g.stop.ignore_eos = opt_bool(body, "ignore_eos").value_or(false);
  if (const auto* stop = field(body, "stop")) {
    if (stop->is_string()) {
      g.stop.stop_strings.push_back(stop->get<std::string>());
    } else if (stop->is_array() && stop->size() <= 16) {
      for (const auto& s : *stop) {
        if (!s.is_string()) throw bad_request("'stop' must be a string or an array of strings", "stop");
        g.stop.stop_strings.push_back(s.get<std::string>());
      }
    } else {
      throw bad_request("'stop' must be a string or an array of at most 16 strings", "stop");
    }
    for (const auto& s : g.stop.stop_strings)
      if (s.empty()) throw bad_request("'stop' strings must not be empty", "stop");
  }

  SamplingParams& p = g.sampling;
  p.temperature = static_cast<float>(opt_number(body, "temperature", 0, 2).value_or(1));
  p.top_p = static_cast<float>(opt_number(body, "top_p", 0, 1).value_or(1));
  if (p.top_p <= 0) throw bad_request("'top_p' must be above 0", "top_p");
  p.top_k = static_cast<int>(opt_int(body, "top_k", 0, 1 << 30).value_or(0));
  p.min_p = static_cast<float>(opt_number(body, "min_p", 0, 1).value_or(0));
  p.repeat_penalty = static_cast<float>(opt_number(body, "repetition_penalty", 0.01, 100).value_or(1));
  if (const auto* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) throw bad_request(fmt::format("'seed' must be an integer, not {}", type_name(*seed)), "seed");
    p.seed = seed->is_number_unsigned() ? seed->get<std::uint64_t>() : static_cast<std::uint64_t>(seed->get<long long>());
    g.seed_given = true;
  } else {
    p.seed = random_seed();
  }

  g.n = static_cast<int>(opt_int(body, "n", 1, config.max_n).value_or(1));
  if (const auto best_of = opt_int(body, "best_of", 1, config.max_n))
    refuse_unless("best_of", *best_of == g.n, "leave it out or equal to n");

  if (chat) {
    const bool want = opt_bool(body, "logprobs").value_or(false);
    const auto top = opt_int(body, "top_logprobs", 0, 20);
    if (top && !want) throw bad_request("'top_logprobs' needs \"logprobs\": true", "top_logprobs");
    g.top_logprobs = want ? static_cast<int>(top.value_or(0)) : -1;
  } else {
    g.top_logprobs = static_cast<int>(opt_int(body, "logprobs", 0, 5).value_or(-1));
  }

  r.stream = opt_bool(body, "stream").value_or(default_stream);
  if (const auto* so = field(body, "stream_options")) {
    if (!so->is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    if (!r.stream) throw bad_request("'stream_options' is only allowed with \"stream\": true", "stream_options");
    r.include_usage = opt_bool(*so, "include_usage").value_or(false);
  }
  r.progress = opt_bool(body, "progress").value_or(true);
  return r;
}

}  // namespace mhla::serve
