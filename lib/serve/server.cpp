#include "serve/server.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <optional>
#include <thread>

#include "mhla/error.hpp"
#include "serve/backend.hpp"
#include "serve/files.hpp"
#include "serve/http_server.hpp"

namespace mhla::serve {

namespace {
constexpr auto kFlushWait = std::chrono::seconds(5);  // after the drain, for the last bytes to go out
}

// Declaration order is destruction order reversed: the I/O context goes before what its
// connections point to.
struct Server::Parts {
  ServerConfig config;
  Logger log;
  Metrics metrics;
  Model model;
  std::optional<Tokenizer> tokenizer;
  ChatTemplate chat;
  std::string model_name;
  CheckpointStore checkpoints;
  Backend backend;
  Engine engine;
  ServerContext context;
  Router router;
  boost::asio::io_context ioc;
  HttpServer http;
  unsigned short port = 0;
  std::vector<std::thread> io_threads;
  bool started = false;
  bool stopped = false;

  static std::optional<Tokenizer> load_tokenizer(const std::string& dir) {
    const auto path = std::filesystem::path(dir) / "tokenizer.model";
    if (!std::filesystem::exists(path)) return std::nullopt;
    return Tokenizer::load(path.string());
  }
  static std::string name_of(const ServerConfig& c) {
    if (!c.model_name.empty()) return c.model_name;
    auto dir = std::filesystem::path(c.model_dir).lexically_normal();
    if (dir.filename().empty()) dir = dir.parent_path();  // "models/tiny/"
    return dir.filename().string();
  }

  Parts(ServerConfig c, std::optional<Model> m)
      : config(std::move(c)),
        log(parse_log_level(config.log_level)),
        model(m ? std::move(*m) : Model::load(config.model_dir)),
        tokenizer(load_tokenizer(config.model_dir)),
        chat(ChatTemplate::for_model(config.model_dir)),
        model_name(name_of(config)),
        checkpoints((std::filesystem::path(config.state_dir) / "checkpoints").string(), model, config, log),
        backend(model, config, log),
        engine(model, backend, tokenizer ? &*tokenizer : nullptr, chat, config, checkpoints, metrics, log),
        context{config,     model,  backend,     tokenizer ? &*tokenizer : nullptr,
                chat,       model_name, engine, checkpoints, metrics, log, std::chrono::system_clock::now()},
        router(context),
        http(ioc, router, config, metrics, log) {}
};

Server::Server(ServerConfig config) : Server(std::move(config), std::nullopt) {}

Server::Server(ServerConfig config, Model model) : Server(std::move(config), std::optional<Model>(std::move(model))) {}

Server::Server(ServerConfig config, std::optional<Model> model) {
  config.validate();
  parts_ = std::make_unique<Parts>(std::move(config), std::move(model));
  Parts& p = *parts_;
  if (p.model.max_state_bytes() > p.config.state_memory)
    throw Error(fmt::format("--state-memory ({} bytes) cannot hold even one sequence of this model ({} bytes); raise it",
                            p.config.state_memory, p.model.max_state_bytes()));
  for (const auto& w : p.model.warnings()) p.log.warn("model_config", {{"warning", w}});
  p.metrics.device = std::string(to_string(p.backend.device()));
  p.metrics.precision = std::string(to_string(p.backend.precision()));
  p.metrics.device_slots = p.backend.slots();
  p.port = p.http.listen(p.config.host, p.config.port);
}

Server::~Server() {
  if (parts_ && parts_->started && !parts_->stopped) {
    begin_drain();
    wait();
  }
}

unsigned short Server::port() const { return parts_->port; }

void Server::start() {
  Parts& p = *parts_;
  p.engine.start();
  p.http.start();
  for (int i = 0; i < p.config.io_threads; ++i) p.io_threads.emplace_back([&p] { p.ioc.run(); });
  p.started = true;
  if (!p.config.port_file.empty()) write_file_atomic(p.config.port_file, fmt::format("{}\n", p.port));
  p.log.info("listening", {{"host", p.config.host},
                           {"port", p.port},
                           {"model", p.model_name},
                           {"device", to_string(p.backend.device())},
                           {"device_name", p.backend.description()},
                           {"precision", to_string(p.backend.precision())},
                           {"state_slots", p.backend.slots()},
                           {"trained_window", p.model.trained_window()},
                           {"state_bytes_max", p.model.max_state_bytes()},
                           {"auth", !p.config.api_keys.empty()}});
}

void Server::begin_drain() {
  Parts& p = *parts_;
  p.http.stop_accepting();
  p.engine.begin_drain();
}

void Server::wait() {
  Parts& p = *parts_;
  if (p.stopped) return;
  p.engine.wait();
  // The engine has sent its last events; let the connections write them.
  const auto deadline = std::chrono::steady_clock::now() + kFlushWait;
  while (p.http.responses_in_flight() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  p.ioc.stop();
  for (auto& t : p.io_threads) t.join();
  p.stopped = true;
  p.log.info("stopped");
}

void Server::run_until_signal() {
  Parts& p = *parts_;
  boost::asio::signal_set signals(p.ioc, SIGTERM, SIGINT);
  signals.async_wait([this, &p](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    p.log.info("signal", {{"signal", signal == SIGTERM ? "SIGTERM" : "SIGINT"}});
    begin_drain();
  });
  start();
  wait();
}

}  // namespace mhla::serve
