#include "support/server_harness.hpp"

#include <chrono>
#include <csignal>
#include <filesystem>
#include <spawn.h>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>

extern char** environ;

namespace mhla::test {

namespace {
const std::string kTiny = std::string(MHLA_TEST_DATA_DIR) + "/models/tiny";
}

serve::ServerConfig server_config(const std::string& state_dir) {
  serve::ServerConfig c;
  c.model_dir = kTiny;
  c.port = 0;
  c.device = "cpu";
  c.policy = ContextPolicy::slide_mean;
  c.state_dir = state_dir;
  c.log_level = "off";
  c.state_memory = std::size_t{64} << 20;
  c.prefix_cache_memory = std::size_t{16} << 20;
  c.prefill_chunk = 16;
  c.step_tokens = 64;
  return c;
}

TestServer::TestServer(const std::function<void(serve::ServerConfig&)>& tweak)
    : own_dir_(std::make_unique<TempDir>()), state_dir_(own_dir_->path().string()) {
  auto c = server_config(state_dir_);
  if (tweak) tweak(c);
  server_ = std::make_unique<serve::Server>(c);
  server_->start();
}

TestServer::TestServer(const std::string& state_dir, const std::function<void(serve::ServerConfig&)>& tweak)
    : state_dir_(state_dir) {
  auto c = server_config(state_dir_);
  if (tweak) tweak(c);
  server_ = std::make_unique<serve::Server>(c);
  server_->start();
}

TestServer::~TestServer() { stop(); }

void TestServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  server_->begin_drain();
  server_->wait();
}

serve::HttpClient TestServer::client(const std::string& key) const {
  return serve::HttpClient("127.0.0.1", server_->port(), key, 30);
}

std::string server_binary() { return MHLA_SERVER_PATH; }

ServerProcess::ServerProcess(const std::string& state_dir, const std::vector<std::string>& extra_args) {
  const std::string port_file = (std::filesystem::path(state_dir) / "port.txt").string();
  std::filesystem::create_directories(state_dir);
  std::filesystem::remove(port_file);
  std::vector<std::string> args = {MHLA_SERVER_PATH, "--model", kTiny, "--port", "0", "--port-file", port_file,
                                   "--state-dir", state_dir, "--device", "cpu", "--policy", "slide_mean",
                                   "--log-level", "warn",
                                   "--prefill-chunk", "16", "--step-tokens", "64"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0)
    throw std::runtime_error("cannot start " MHLA_SERVER_PATH);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = slurp(port_file);
    if (!text.empty()) {
      port_ = static_cast<unsigned short>(std::stoi(text));
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("mhla-server exited before listening");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  throw std::runtime_error("mhla-server did not start listening within 30 s");
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

serve::HttpClient ServerProcess::client(const std::string& key) const {
  return serve::HttpClient("127.0.0.1", port_, key, 30);
}

void ServerProcess::signal(int sig) { ::kill(pid_, sig); }

int ServerProcess::wait() {
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

nlohmann::json json_of(const serve::HttpResult& r) { return nlohmann::json::parse(r.body); }

Streamed stream_tokens(const serve::HttpClient& client, const std::string& target, nlohmann::json body,
                       int stop_after) {
  body["stream"] = true;
  Streamed s;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = client.stream("POST", target, body.dump(), [&](const serve::SseEvent& e) {
    if (e.event == "progress") {
      ++s.progress_events;
      return true;
    }
    if (e.data == "[DONE]") {
      s.done = true;
      return true;
    }
    const auto j = nlohmann::json::parse(e.data);
    if (j.contains("usage") && !j["usage"].is_null()) s.usage = j["usage"];
    if (!j.contains("choices") || j["choices"].empty()) return true;
    const auto& c = j["choices"][0];
    if (c.contains("token_ids"))
      for (int id : c["token_ids"]) {
        s.tokens.push_back(id);
        s.token_times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    if (c.contains("text")) s.text += c["text"].get<std::string>();
    if (c.contains("delta") && c["delta"].contains("content")) s.text += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) s.finish_reason = c["finish_reason"];
    return stop_after <= 0 || static_cast<int>(s.tokens.size()) < stop_after;
  });
  s.status = r.status;
  return s;
}

double metric_value(const serve::HttpClient& client, const std::string& metric) {
  const auto body = client.request("GET", "/metrics").body;
  size_t at = 0;
  while ((at = body.find(metric + " ", at)) != std::string::npos) {
    if (at == 0 || body[at - 1] == '\n') return std::stod(body.substr(at + metric.size() + 1));
    at += metric.size();
  }
  throw std::runtime_error("no metric " + metric);
}

}  // namespace mhla::test
