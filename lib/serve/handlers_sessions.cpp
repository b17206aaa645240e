// /v1/sessions: stateful sessions (create, append, generate, fork, checkpoint, restore, undo,
// regenerate, cancel, get, delete, list).
#include <fmt/format.h>

#include "serve/ids.hpp"
#include "serve/request_fields.hpp"
#include "serve/router.hpp"

namespace mhla::serve {

namespace {

// Input for a session: "text", "tokens" or "messages" (at most one).
void read_input(const ServerContext& ctx, const nlohmann::json& body, WorkCommand& w, const char* text_key,
                const char* tokens_key) {
  const auto text = opt_string(body, text_key);
  const bool has_tokens = body.contains(tokens_key) && !body[tokens_key].is_null();
  const bool has_messages = body.contains("messages") && !body["messages"].is_null();
  if (int(text.has_value()) + int(has_tokens) + int(has_messages) > 1)
    throw bad_request(fmt::format("give one of '{}', '{}' or 'messages'", text_key, tokens_key));
  w.add_bos = opt_bool(body, "add_bos").value_or(true);
  if (text) {
    if (!ctx.tokenizer)
      throw bad_request(fmt::format("the model {} has no tokenizer.model: give '{}' instead", ctx.model_name, tokens_key),
                        text_key);
    w.tokens = ctx.tokenizer->encode(*text, false);
    w.text = *text;
  } else if (has_tokens) {
    w.tokens = token_ids(body[tokens_key], tokens_key, ctx.model.config().vocab_size);
    w.add_bos = false;  // token ids are used as given
    w.text = ctx.tokenizer ? ctx.tokenizer->decode(w.tokens) : fmt::format("<{} tokens>", w.tokens.size());
  } else if (has_messages) {
    w.messages = chat_messages(body["messages"], "messages");
    w.has_messages = true;
  }
}

ApiError method_not_allowed(const std::string& method, const char* allowed) {
  return ApiError(405, fmt::format("{} is not allowed here; use {}", method, allowed), {}, "method_not_allowed");
}

Reply session_command(ServerContext& ctx, const HttpRequest& req, const std::string& owner, SessionCommand::Kind kind,
                      const std::string& id) {
  SessionCommand c;
  c.kind = kind;
  c.session_id = id;
  return engine_reply(ctx, req, owner, c, info_format(), false);
}

Reply generation(ServerContext& ctx, const HttpRequest& req, const std::string& owner, const nlohmann::json& body,
                 WorkCommand w) {
  auto g = generation_request(body, ctx.config, ctx.model.config().eos_token_id, w.has_messages,
                              ctx.config.default_max_tokens, true);
  if (g.spec.n != 1) throw bad_request("a session generates one continuation: leave n at 1, or fork the session", "n");
  if (w.has_messages)
    for (const auto& s : ctx.chat.stop()) g.spec.stop.stop_strings.push_back(s);
  w.gen = g.spec;
  w.progress = g.stream && g.progress;
  CompletionFormatOptions f;
  f.model = ctx.model_name;
  f.include_usage = g.include_usage;
  f.logprobs = g.spec.top_logprobs;
  f.session_id = w.session_id;
  return engine_reply(ctx, req, owner, std::move(w), completion_format(f, ctx.tokenizer), g.stream);
}

}  // namespace

Reply handle_session(ServerContext& ctx, const HttpRequest& req, const std::string& owner,
                     const std::vector<std::string>& path) {
  const std::string& m = req.method;
  using Kind = SessionCommand::Kind;
  if (path.size() == 2) {
    if (m == "GET") return session_command(ctx, req, owner, Kind::list, {});
    if (m != "POST") throw method_not_allowed(m, "GET or POST");
    const auto body = parse_body(req.body);
    WorkCommand w;
    w.kind = WorkCommand::Kind::create_session;
    w.policy = opt_policy(body);
    read_input(ctx, body, w, "prefix", "prefix_tokens");
    if (!w.tokens.empty() && w.add_bos)
      w.tokens.insert(w.tokens.begin(), ctx.tokenizer ? ctx.tokenizer->bos_id() : ctx.model.config().bos_token_id);
    const bool stream = opt_bool(body, "stream").value_or(false);
    w.progress = stream;
    return engine_reply(ctx, req, owner, std::move(w), info_format(), stream);
  }
  if (path.size() == 3 && path[2] == "restore") {
    if (m != "POST") throw method_not_allowed(m, "POST");
    const auto body = parse_body(req.body);
    const auto checkpoint = opt_string(body, "checkpoint_id");
    if (!checkpoint) throw bad_request("'checkpoint_id' is required", "checkpoint_id");
    if (!is_id(*checkpoint, "ckpt")) throw not_found(fmt::format("no checkpoint {}", *checkpoint));
    SessionCommand c;
    c.kind = Kind::restore;
    c.checkpoint_id = *checkpoint;
    return engine_reply(ctx, req, owner, c, info_format(), false);
  }
  if (path.size() < 3 || path.size() > 4) throw not_found(fmt::format("no endpoint {} {}", m, req.target));
  const std::string& id = path[2];
  if (!is_id(id, "sess")) throw not_found(fmt::format("no session {}", id));
  if (path.size() == 3) {
    if (m == "GET") return session_command(ctx, req, owner, Kind::get, id);
    if (m == "DELETE") return session_command(ctx, req, owner, Kind::remove, id);
    throw method_not_allowed(m, "GET or DELETE");
  }
  const std::string& action = path[3];
  static const std::pair<const char*, Kind> simple[] = {
      {"fork", Kind::fork}, {"checkpoint", Kind::checkpoint}, {"undo", Kind::undo}, {"cancel", Kind::cancel}};
  for (const auto& [name, kind] : simple)
    if (action == name) {
      if (m != "POST") throw method_not_allowed(m, "POST");
      return session_command(ctx, req, owner, kind, id);
    }
  if (action != "append" && action != "generate" && action != "regenerate")
    throw not_found(fmt::format("no endpoint {} {}", m, req.target));
  if (m != "POST") throw method_not_allowed(m, "POST");
  const auto body = parse_body(req.body);
  WorkCommand w;
  w.session_id = id;
  w.policy = opt_policy(body);
  if (action == "regenerate") {
    w.kind = WorkCommand::Kind::regenerate;
    return generation(ctx, req, owner, body, std::move(w));
  }
  read_input(ctx, body, w, "text", "tokens");
  if (action == "generate") {
    w.kind = WorkCommand::Kind::generate;
    return generation(ctx, req, owner, body, std::move(w));
  }
  w.kind = WorkCommand::Kind::append;
  const bool stream = opt_bool(body, "stream").value_or(false);
  w.progress = stream;
  return engine_reply(ctx, req, owner, std::move(w), info_format(), stream);
}

}  // namespace mhla::serve
