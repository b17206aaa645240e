// POST /v1/completions and POST /v1/chat/completions (OpenAI-compatible).
#include <fmt/format.h>

#include "serve/ids.hpp"
#include "serve/request_fields.hpp"
#include "serve/router.hpp"

namespace mhla::serve {

namespace {

int eos_of(const ServerContext& ctx) { return ctx.model.config().eos_token_id; }

const Tokenizer& need_tokenizer(const ServerContext& ctx, const char* param) {
  if (!ctx.tokenizer)
    throw bad_request(fmt::format("the model {} has no tokenizer.model, so it takes token ids only", ctx.model_name),
                      param);
  return *ctx.tokenizer;
}

// prompt: a string, token ids, or a one-element array of either.
std::vector<int> prompt_tokens(const ServerContext& ctx, const nlohmann::json& body) {
  const auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) throw bad_request("'prompt' is required", "prompt");
  nlohmann::json p = *it;
  if (p.is_array() && p.size() == 1 && (p[0].is_string() || p[0].is_array())) p = p[0];
  const bool add_bos = opt_bool(body, "add_bos").value_or(true);
  if (p.is_string()) return need_tokenizer(ctx, "prompt").encode(p.get<std::string>(), add_bos);
  if (p.is_array() && !p.empty() && p[0].is_string())
    throw bad_request("batched prompts are not supported: send one prompt per request (or use n)", "prompt");
  if (p.is_array()) return token_ids(p, "prompt", ctx.model.config().vocab_size);
  throw bad_request(fmt::format("'prompt' must be a string or an array of token ids, not {}", p.type_name()), "prompt");
}

}  // namespace

Reply handle_completions(ServerContext& ctx, const HttpRequest& req, const std::string& owner) {
  const auto body = parse_body(req.body);
  WorkCommand w;
  w.kind = WorkCommand::Kind::completion;
  w.tokens = prompt_tokens(ctx, body);
  w.policy = opt_policy(body);
  const auto g = generation_request(body, ctx.config, eos_of(ctx), false, ctx.config.default_max_tokens, false);
  w.gen = g.spec;
  w.progress = g.stream && g.progress;
  CompletionFormatOptions f;
  f.model = ctx.model_name;
  f.n = g.spec.n;
  f.include_usage = g.include_usage;
  f.logprobs = g.spec.top_logprobs;
  return engine_reply(ctx, req, owner, std::move(w), completion_format(f, ctx.tokenizer), g.stream);
}

Reply handle_chat(ServerContext& ctx, const HttpRequest& req, const std::string& owner) {
  const auto body = parse_body(req.body);
  const auto it = body.find("messages");
  if (it == body.end()) throw bad_request("'messages' is required", "messages");
  std::vector<ChatMessage> messages = chat_messages(*it, "messages");
  if (messages.empty()) throw bad_request("'messages' must hold at least one message", "messages");
  const Tokenizer& tok = need_tokenizer(ctx, "messages");

  auto g = generation_request(body, ctx.config, eos_of(ctx), true, ctx.config.max_tokens_limit, false);
  for (const auto& s : ctx.chat.stop()) g.spec.stop.stop_strings.push_back(s);
  WorkCommand w;
  w.policy = opt_policy(body);
  w.progress = g.stream && g.progress;
  CompletionFormatOptions f;
  f.chat = true;
  f.model = ctx.model_name;
  f.n = g.spec.n;
  f.include_usage = g.include_usage;
  f.logprobs = g.spec.top_logprobs;
  if (const auto session = opt_string(body, "session_id")) {
    // Each turn prefills only the messages the session has not seen.
    if (!is_id(*session, "sess")) throw not_found(fmt::format("no session {}", *session));
    if (g.spec.n != 1) throw bad_request("a request on a session generates one reply: leave n at 1", "n");
    w.kind = WorkCommand::Kind::generate;
    w.session_id = *session;
    w.has_messages = true;
    w.messages = std::move(messages);
    f.session_id = *session;
  } else {
    w.kind = WorkCommand::Kind::completion;
    w.tokens = tok.encode(ctx.chat.render(messages, false, true), ctx.chat.add_bos());
  }
  w.gen = g.spec;
  return engine_reply(ctx, req, owner, std::move(w), completion_format(f, ctx.tokenizer), g.stream);
}

}  // namespace mhla::serve
