#pragma once
// Reading request bodies: every field is type-checked, and a wrong one throws ApiError 400
// naming it (param) and saying what it must be.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "mhla/options.hpp"
#include "serve/chat_template.hpp"
#include "serve/config.hpp"
#include "serve/engine.hpp"

namespace mhla::serve {

// The body as a JSON object (an empty body counts as {}).
nlohmann::json parse_body(const std::string& body);

std::optional<bool> opt_bool(const nlohmann::json& body, const char* name);
std::optional<long long> opt_int(const nlohmann::json& body, const char* name, long long min, long long max);
std::optional<double> opt_number(const nlohmann::json& body, const char* name, double min, double max);
std::optional<std::string> opt_string(const nlohmann::json& body, const char* name);

// Token ids, each inside the vocabulary.
std::vector<int> token_ids(const nlohmann::json& value, const char* name, int vocab);
// [{role: system|developer|user|assistant, content: string or [{type: text, text}]}, ...]
std::vector<ChatMessage> chat_messages(const nlohmann::json& value, const char* name);
std::optional<ContextPolicy> opt_policy(const nlohmann::json& body);

struct GenerationRequest {
  GenerationSpec spec;
  bool stream = false;
  bool include_usage = false;
  bool progress = true;  // progress events while a streamed prompt prefills
};

// The sampling and stopping fields shared by the completion, chat and session endpoints:
// max_tokens (max_completion_tokens), temperature, top_p, top_k, min_p, repetition_penalty,
// stop, seed, n, logprobs/top_logprobs (in the chat or completions dialect), ignore_eos,
// stream, stream_options, progress. Fields OpenAI has but this server does not do
// (nonzero penalties, logit_bias, echo, best_of > n, suffix, tools) are refused, not ignored.
GenerationRequest generation_request(const nlohmann::json& body, const ServerConfig& config, int eos_id, bool chat,
                                     int default_max_tokens, bool default_stream);

}  // namespace mhla::serve
