// The mhla-server executable: after kill -9 a restart serves checkpointed and evicted
// sessions that continue identically; SIGTERM lets running streams finish, writes sessions
// to disk and exits cleanly.
#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdlib>
#include <fmt/format.h>
#include <fstream>
#include <thread>

#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

json post(const serve::HttpClient& c, const std::string& target, const json& body = json::object()) {
  const auto r = c.request("POST", target, body.dump());
  INFO(target << " -> " << r.body);
  REQUIRE(r.status == 200);
  return json::parse(r.body);
}

json generate(const serve::HttpClient& c, const std::string& id) {
  return post(c, "/v1/sessions/" + id + "/generate",
              {{"max_tokens", 8}, {"temperature", 0.8}, {"stream", false}, {"ignore_eos", true}})["choices"][0]["token_ids"];
}

}  // namespace

TEST_CASE("server: after kill -9 a restart serves checkpointed and evicted sessions identically", "[server]") {
  TempDir dir;
  const std::string state = (dir.path() / "state").string();
  std::string checkpoint, evicted;
  json after_checkpoint, after_eviction;
  {
    ServerProcess p(state, {"--idle-timeout", "0.2"});
    const auto c = p.client();
    const std::string id = post(c, "/v1/sessions", {{"prefix", "survive a crash"}})["id"];
    generate(c, id);
    checkpoint = post(c, "/v1/sessions/" + id + "/checkpoint")["id"];
    after_checkpoint = generate(c, id);

    evicted = post(c, "/v1/sessions", {{"prefix", "sleep on disk"}})["id"];
    generate(c, evicted);
    const std::string twin = post(c, "/v1/sessions/" + evicted + "/fork")["id"];
    after_eviction = generate(c, twin);
    // Idle sessions are written to disk within about a second.
    for (int i = 0; i < 300 && metric_value(c, "mhla_sessions_on_disk") < 3; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(metric_value(c, "mhla_sessions_on_disk") == 3);
    p.signal(SIGKILL);
    p.wait();
  }
  ServerProcess p(state);
  const auto c = p.client();
  const std::string restored = post(c, "/v1/sessions/restore", {{"checkpoint_id", checkpoint}})["id"];
  CHECK(generate(c, restored) == after_checkpoint);
  CHECK(generate(c, evicted) == after_eviction);
  CHECK(json_of(c.request("GET", "/v1/sessions/" + evicted))["transcript"].size() == 3);  // prefix, two replies
}

TEST_CASE("server: SIGTERM drains running streams, keeps sessions and exits", "[server]") {
  TempDir dir;
  const std::string state = (dir.path() / "state").string();
  std::string id;
  long long position = 0;
  {
    ServerProcess p(state, {"--max-tokens-limit", "100000"});
    const auto c = p.client();
    id = post(c, "/v1/sessions", {{"prefix", "kept across restarts"}})["id"];
    std::atomic<int> seen{0};
    Streamed s;
    std::thread running([&] {
      s.status = c.stream("POST", "/v1/completions",
                          json({{"prompt", "drain me"}, {"max_tokens", 3000}, {"ignore_eos", true}, {"stream", true}}).dump(),
                          [&](const serve::SseEvent& e) {
                            if (e.data == "[DONE]") s.done = true;
                            else if (json::parse(e.data)["choices"][0]["finish_reason"].is_null()) ++seen;
                            else s.finish_reason = json::parse(e.data)["choices"][0]["finish_reason"];
                            return true;
                          })
                     .status;
    });
    while (seen.load() < 10) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    p.signal(SIGTERM);
    running.join();
    CHECK(s.status == 200);
    CHECK(s.done);
    CHECK(s.finish_reason == "length");
    CHECK(seen.load() == 3000);
    CHECK(p.wait() == 0);
    CHECK_THROWS(c.request("GET", "/health"));  // no longer listening
  }
  ServerProcess p(state);
  const auto c = p.client();
  const json info = json_of(c.request("GET", "/v1/sessions/" + id));
  CHECK(info["transcript"][0]["content"] == "kept across restarts");
  CHECK(info["position"].get<long long>() > position);
}

TEST_CASE("server: mhla-server --help documents its flags, and a config file sets them", "[server]") {
  TempDir dir;
  const std::string help = dir.file("help.txt");
  REQUIRE(std::system(fmt::format("'{}' --help > '{}'", server_binary(), help).c_str()) == 0);
  const std::string text = slurp(help);
  for (const char* flag : {"--config", "--model", "--host", "--port", "--state-memory", "--prefix-cache-memory",
                           "--step-tokens", "--api-key", "--max-body-bytes", "--idle-timeout", "--checkpoint-quota-bytes",
                           "--drain-timeout", "/v1/sessions/restore", "SIGTERM"})
    CHECK(text.find(flag) != std::string::npos);
  CHECK(std::system(fmt::format("'{}' --model /nonexistent 2> '{}'", server_binary(), dir.file("err.txt")).c_str()) != 0);
  CHECK(slurp(dir.file("err.txt")).starts_with("mhla-server: error: "));

  const std::string config = dir.file("server.toml");
  std::ofstream(config) << "model-name = \"from-config\"\napi-key = [\"k1\", \"k2\"]\nmax-n = 2\n";
  ServerProcess p((dir.path() / "state").string(), {"--config", config});
  CHECK(p.client().request("GET", "/v1/models").status == 401);
  CHECK(json_of(p.client("k2").request("GET", "/v1/models"))["data"][0]["id"] == "from-config");
  CHECK(p.client("k1").request("POST", "/v1/completions", R"({"prompt": "x", "n": 3})").status == 400);
}
