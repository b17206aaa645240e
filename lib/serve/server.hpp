#pragma once
// mhla-server as a library: the model, the engine, the stores and the HTTP listener, wired
// together. The executable (apps/mhla-server) and the tests run it the same way.
#include <memory>
#include <optional>
#include <string>

#include "mhla/model.hpp"
#include "serve/config.hpp"

namespace mhla::serve {

class Server {
public:
  // Loads the model (and tokenizer, chat template), opens the state directory and binds the
  // port; throws mhla::Error saying what failed.
  explicit Server(ServerConfig config);
  // Serves a model already in memory (benchmarks with random weights); config.model_dir still
  // says where tokenizer.model and chat_template.json would be.
  Server(ServerConfig config, Model model);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  unsigned short port() const;
  // Starts the engine and the I/O threads; returns at once. Writes --port-file if asked.
  void start();
  // Graceful stop (what SIGTERM does): no new connections or work, running requests finish
  // (until --drain-timeout, then they end cancelled), sessions in memory go to disk.
  void begin_drain();
  // Blocks until the drain is over and every thread has stopped.
  void wait();
  // start(), then serve until SIGTERM or SIGINT, then drain; for the executable.
  void run_until_signal();

  struct Parts;

private:
  Server(ServerConfig config, std::optional<Model> model);
  std::unique_ptr<Parts> parts_;
};

}  // namespace mhla::serve
