#pragma once
// Running mhla-server in tests: in this process on a free loopback port (TestServer), or as
// the built executable (ServerProcess) for kill -9 and SIGTERM. Plus helpers for the JSON and
// event streams the tests read.
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/types.h>
#include <vector>

#include "serve/client.hpp"
#include "serve/config.hpp"
#include "serve/server.hpp"
#include "support/cli.hpp"

namespace mhla::test {

// The tiny test model on the CPU (whatever GPU the machine has), any free port, slide_mean
// (its trained window is only 32 tokens), logs off, state under state_dir.
serve::ServerConfig server_config(const std::string& state_dir);

class TestServer {
public:
  explicit TestServer(const std::function<void(serve::ServerConfig&)>& tweak = {});
  // Another server over the same state directory (a restart, or a second machine's disk).
  TestServer(const std::string& state_dir, const std::function<void(serve::ServerConfig&)>& tweak);
  ~TestServer();

  serve::HttpClient client(const std::string& key = {}) const;
  unsigned short port() const { return server_->port(); }
  const std::string& state_dir() const { return state_dir_; }
  void stop();  // drain and wait, as SIGTERM does

private:
  std::unique_ptr<TempDir> own_dir_;
  std::string state_dir_;
  std::unique_ptr<serve::Server> server_;
  bool stopped_ = false;
};

// The path of the built mhla-server executable.
std::string server_binary();

// The built mhla-server on the CPU, started with --port 0 and --port-file; waits until it listens.
class ServerProcess {
public:
  ServerProcess(const std::string& state_dir, const std::vector<std::string>& extra_args = {});
  ~ServerProcess();  // SIGKILL if still running
  unsigned short port() const { return port_; }
  serve::HttpClient client(const std::string& key = {}) const;
  void signal(int sig);
  int wait();  // the exit status (-1 when killed by a signal)

private:
  pid_t pid_ = -1;
  unsigned short port_ = 0;
};

nlohmann::json json_of(const serve::HttpResult& r);

// A streamed completion as the client saw it.
struct Streamed {
  int status = 0;
  std::vector<int> tokens;
  std::string text;
  std::string finish_reason;
  std::vector<double> token_times;  // seconds since the request was sent, per token chunk
  nlohmann::json usage;
  bool done = false;  // "data: [DONE]" arrived
  int progress_events = 0;
};
// POSTs body (stream: true is added) and gathers the stream; stop_after > 0 hangs up after
// that many tokens.
Streamed stream_tokens(const serve::HttpClient& client, const std::string& target, nlohmann::json body,
                       int stop_after = 0);

// The value of one sample in GET /metrics (`metric`: its full name with any labels).
double metric_value(const serve::HttpClient& client, const std::string& metric);

}  // namespace mhla::test
