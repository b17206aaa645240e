#include "serve/router.hpp"

#include <fmt/format.h>
#include <set>

#include "serve/ids.hpp"

namespace mhla::serve {

namespace {

std::vector<std::string> split_path(std::string_view target) {
  target = target.substr(0, target.find('?'));
  std::vector<std::string> parts;
  size_t at = 0;
  while (at < target.size()) {
    const size_t slash = target.find('/', at);
    const size_t end = slash == std::string_view::npos ? target.size() : slash;
    if (end > at) parts.emplace_back(target.substr(at, end - at));
    at = end + 1;
  }
  return parts;
}

// Compares without an early exit, so response time says nothing about how much matched.
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

ApiError method_not_allowed(const std::string& method, const std::string& allowed) {
  return ApiError(405, fmt::format("{} is not allowed here; use {}", method, allowed), {}, "method_not_allowed");
}

}  // namespace

Reply json_reply(int status, const nlohmann::json& body) {
  Reply r;
  r.status = status;
  r.body = dump(body);
  return r;
}

Reply error_reply(const ApiError& e) { return json_reply(e.status(), e.to_json()); }

Reply engine_reply(ServerContext& ctx, const HttpRequest& req, const std::string& owner,
                   std::variant<WorkCommand, SessionCommand> op, std::unique_ptr<EventFormat> format, bool stream) {
  Reply r;
  r.job = std::make_shared<Job>(owner);
  r.format = std::move(format);
  r.stream = stream;
  ctx.engine.submit(Command{r.job, std::move(op), req.arrived});
  return r;
}

Router::Router(ServerContext& ctx) : ctx_(ctx) {
  for (const auto& key : ctx.config.api_keys) owners_.push_back(owner_of(key));
}

std::size_t Router::body_limit(std::string_view method, std::string_view target) const {
  const auto path = split_path(target);
  if (method == "POST" && path.size() == 2 && path[0] == "v1" && path[1] == "checkpoints")
    return ctx_.config.max_upload_bytes;
  return ctx_.config.max_body_bytes;
}

std::string Router::authenticate(const HttpRequest& req) const {
  if (ctx_.config.api_keys.empty()) return {};
  constexpr std::string_view scheme = "Bearer ";
  if (!req.authorization.starts_with(scheme))
    throw ApiError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'", {}, "invalid_api_key");
  const std::string_view key = std::string_view(req.authorization).substr(scheme.size());
  bool ok = false;
  for (const auto& k : ctx_.config.api_keys) ok |= same_secret(key, k);
  if (!ok) throw ApiError(401, "incorrect API key provided", {}, "invalid_api_key");
  return owner_of(key);
}

Reply Router::handle(const HttpRequest& req) {
  std::string route = "unknown";
  Reply r;
  try {
    r = dispatch(req, split_path(req.target), route);
  } catch (const ApiError& e) {
    r = error_reply(e);
  } catch (const std::exception& e) {
    ctx_.log.error("handler_failed", {{"target", req.target}, {"reason", e.what()}});
    r = error_reply(ApiError(500, fmt::format("internal error: {}", e.what())));
  }
  r.route = route;
  return r;
}

Reply Router::dispatch(const HttpRequest& req, const std::vector<std::string>& path, std::string& route) {
  const std::string& m = req.method;
  if (path.size() == 1 && path[0] == "health") {
    route = "/health";
    if (m != "GET") throw method_not_allowed(m, "GET");
    return handle_health(ctx_);
  }
  if (path.size() == 1 && path[0] == "metrics") {
    route = "/metrics";
    if (m != "GET") throw method_not_allowed(m, "GET");
    return handle_metrics(ctx_);
  }
  // Outside /v1 the chat page is public, like /health: it asks for a key when the API needs one.
  if (path.empty() || path[0] != "v1") return handle_web(req, path, route);

  const std::string owner = authenticate(req);
  if (path.size() >= 2 && path[1] == "models") {
    route = path.size() == 2 ? "/v1/models" : "/v1/models/{id}";
    if (m != "GET") throw method_not_allowed(m, "GET");
    if (path.size() > 3) throw not_found(fmt::format("no endpoint {}", req.target));
    return handle_models(ctx_, path.size() == 3 ? &path[2] : nullptr);
  }
  if (path.size() == 2 && path[1] == "completions") {
    route = "/v1/completions";
    if (m != "POST") throw method_not_allowed(m, "POST");
    return handle_completions(ctx_, req, owner);
  }
  if (path.size() == 3 && path[1] == "chat" && path[2] == "completions") {
    route = "/v1/chat/completions";
    if (m != "POST") throw method_not_allowed(m, "POST");
    return handle_chat(ctx_, req, owner);
  }
  if (path.size() >= 2 && path[1] == "sessions") {
    route = "/v1/sessions";
    if (path.size() == 3) route += path[2] == "restore" ? "/restore" : "/{id}";
    static const std::set<std::string> actions = {"append", "generate", "fork", "checkpoint",
                                                  "undo", "regenerate", "cancel"};
    if (path.size() == 4) route += "/{id}/" + (actions.count(path[3]) ? path[3] : std::string("unknown"));
    return handle_session(ctx_, req, owner, path);
  }
  if (path.size() >= 2 && path[1] == "checkpoints") {
    route = path.size() == 2 ? "/v1/checkpoints" : "/v1/checkpoints/{id}";
    return handle_checkpoint(ctx_, req, owner, path);
  }
  throw not_found(fmt::format("no endpoint {} {}; see docs/http-api.md", m, req.target));
}

}  // namespace mhla::serve
