// mhla-server: streaming, stateful serving of an MHLA model over HTTP (docs/http-api.md).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "options.hpp"
#include "serve/server.hpp"

namespace {

constexpr const char* kEndpoints = R"(Endpoints (docs/http-api.md has the fields and a curl example for each):
  GET  /                                            the chat page (docs/chat-page.md): open it in a browser
  POST /v1/completions, POST /v1/chat/completions   OpenAI-compatible; "stream": true for Server-Sent Events
  GET  /v1/models                                   the model, its trained window and context policies
  POST /v1/sessions                                 a stateful session (optional prefix to prefill)
  GET|DELETE /v1/sessions/{id}                      position, state bytes, transcript / delete
  POST /v1/sessions/{id}/append|generate|fork|checkpoint|undo|regenerate|cancel
  POST /v1/sessions/restore                         a new session from a checkpoint id
  GET|POST /v1/checkpoints, GET|DELETE /v1/checkpoints/{id}   list, upload, download, delete
  GET  /health, GET /metrics                        liveness; Prometheus metrics
Signals: SIGTERM or SIGINT stop accepting, let running requests finish (--drain-timeout), write
sessions in memory to --state-dir and exit; a restart finds them again.)";

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mhla-server: serve an MHLA language model over HTTP (OpenAI-compatible, with stateful sessions)"};
  app.footer(kEndpoints);
  mhla::server_app::Options options(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "mhla-server: error: %s (see mhla-server --help)\n", e.what());
    return 1;
  }
  try {
    mhla::serve::Server server(options.finish());
    server.run_until_signal();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mhla-server: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
