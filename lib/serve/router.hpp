#pragma once
// Requests to responses: authentication, routing, and the endpoint handlers (handlers_*.cpp).
// Handlers that need the model hand a command to the engine and return its Job together
// with the format its events take; the connection (http_server.cpp) delivers them.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/tokenizer.hpp"
#include "serve/backend.hpp"
#include "serve/chat_template.hpp"
#include "serve/checkpoint_store.hpp"
#include "serve/config.hpp"
#include "serve/engine.hpp"
#include "serve/formats.hpp"
#include "serve/log.hpp"
#include "serve/metrics.hpp"

namespace mhla::serve {

struct HttpRequest {
  std::string method;
  std::string target;
  std::string body;
  std::string authorization;  // the Authorization header
  std::string if_none_match;  // the If-None-Match header (the page's files are revalidated)
  Clock::time_point arrived = Clock::now();
};

struct Reply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::string file;                     // when set, the file's bytes are the body
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type
  std::shared_ptr<Job> job;             // when set, the body comes from the engine's events
  std::unique_ptr<EventFormat> format;
  bool stream = false;                  // Server-Sent Events
  std::string route;                    // for metrics and logs, ids replaced by {id}
};

Reply json_reply(int status, const nlohmann::json& body);
Reply error_reply(const ApiError& e);

// What the handlers share.
struct ServerContext {
  const ServerConfig& config;
  const Model& model;
  const Backend& backend;
  const Tokenizer* tokenizer;
  const ChatTemplate& chat;
  std::string model_name;
  Engine& engine;
  CheckpointStore& checkpoints;
  Metrics& metrics;
  Logger& log;
  std::chrono::system_clock::time_point started;
};

class Router {
public:
  explicit Router(ServerContext& ctx);
  // Never throws: every failure becomes an OpenAI-style error reply.
  Reply handle(const HttpRequest& request);
  // The largest body accepted for this request (uploads get --max-upload-bytes).
  std::size_t body_limit(std::string_view method, std::string_view target) const;

private:
  Reply dispatch(const HttpRequest& request, const std::vector<std::string>& path, std::string& route);
  std::string authenticate(const HttpRequest& request) const;  // the owner; throws ApiError 401

  ServerContext& ctx_;
  std::vector<std::string> owners_;  // digests of the configured keys
};

// Endpoint handlers; `owner` is the caller's identity (see owner_of).
Reply handle_health(ServerContext& ctx);
Reply handle_metrics(ServerContext& ctx);
Reply handle_models(ServerContext& ctx, const std::string* id);
Reply handle_completions(ServerContext& ctx, const HttpRequest& req, const std::string& owner);
Reply handle_chat(ServerContext& ctx, const HttpRequest& req, const std::string& owner);
Reply handle_session(ServerContext& ctx, const HttpRequest& req, const std::string& owner,
                     const std::vector<std::string>& path);
Reply handle_checkpoint(ServerContext& ctx, const HttpRequest& req, const std::string& owner,
                        const std::vector<std::string>& path);
// The chat page: / and the files it loads (lib/serve/web); 404 for any other name.
Reply handle_web(const HttpRequest& req, const std::vector<std::string>& path, std::string& route);

// A reply whose body comes from the engine: submits the command.
Reply engine_reply(ServerContext& ctx, const HttpRequest& req, const std::string& owner,
                   std::variant<WorkCommand, SessionCommand> op, std::unique_ptr<EventFormat> format, bool stream);

}  // namespace mhla::serve
