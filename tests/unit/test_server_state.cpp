// Session state beyond memory: eviction to disk under memory pressure with transparent
// restore, checkpoints moved between servers (download, upload, continue identically),
// damaged uploads refused, quotas.
#include <catch2/catch.hpp>
#include <map>

#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

json post(const serve::HttpClient& c, const std::string& target, const json& body = json::object(), int expect = 200) {
  const auto r = c.request("POST", target, body.dump());
  INFO(target << " -> " << r.body);
  REQUIRE(r.status == expect);
  return json::parse(r.body);
}

json generate(const serve::HttpClient& c, const std::string& id, const json& extra = json::object()) {
  json body = {{"max_tokens", 6}, {"temperature", 0}, {"stream", false}, {"ignore_eos", true}};
  body.update(extra);
  return post(c, "/v1/sessions/" + id + "/generate", body)["choices"][0]["token_ids"];
}

// Eight sessions, three turns each; returns every reply in order.
std::vector<json> conversation(const serve::HttpClient& c) {
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i)
    ids.push_back(post(c, "/v1/sessions", {{"prefix", "session number " + std::to_string(i)}})["id"]);
  std::vector<json> replies;
  for (int turn = 0; turn < 3; ++turn)
    for (const auto& id : ids) replies.push_back(generate(c, id, {{"text", " turn " + std::to_string(turn)}}));
  for (const auto& id : ids) {
    const json info = json_of(c.request("GET", "/v1/sessions/" + id));
    replies.push_back(info["transcript"]);
    replies.push_back(info["position"]);
  }
  return replies;
}

}  // namespace

TEST_CASE("server: under memory pressure idle sessions go to disk and come back transparently", "[server]") {
  TestServer roomy;
  // Room for about three of the eight sessions with their turn starts (~30 KB each at the end).
  constexpr std::size_t kBudget = 3 * 40960;
  TestServer tight([](serve::ServerConfig& c) { c.state_memory = kBudget; });
  const auto expected = conversation(roomy.client());
  const auto c = tight.client();
  const auto got = conversation(c);
  CHECK(got == expected);
  CHECK(metric_value(c, "mhla_session_evictions_total") > 10);
  CHECK(metric_value(c, "mhla_session_restores_total") > 10);
  CHECK(metric_value(c, "mhla_sessions_on_disk") >= 5);
  CHECK(metric_value(c, "mhla_state_memory_bytes") <= kBudget);
  CHECK(metric_value(roomy.client(), "mhla_session_evictions_total") == 0);
}

TEST_CASE("server: a checkpoint downloaded from one server continues identically on another", "[server]") {
  TestServer a, b;
  const auto ca = a.client(), cb = b.client();
  const std::string id = post(ca, "/v1/sessions", {{"prefix", "A story that moves between servers"}})["id"];
  generate(ca, id, {{"temperature", 0.9}, {"seed", 7}});
  const json ckpt = post(ca, "/v1/sessions/" + id + "/checkpoint");
  CHECK(ckpt["position"] == json_of(ca.request("GET", "/v1/sessions/" + id))["position"]);
  const auto file = ca.request("GET", "/v1/checkpoints/" + ckpt["id"].get<std::string>());
  REQUIRE(file.status == 200);
  CHECK(file.content_type == "application/octet-stream");
  CHECK(file.body.size() == ckpt["bytes"].get<size_t>());
  // Sampled, without a seed: the sampler's random state travels with the checkpoint.
  const json sampled = {{"temperature", 0.9}, {"max_tokens", 12}};
  const json reference = generate(ca, id, sampled);

  const json uploaded = json_of(cb.request("POST", "/v1/checkpoints", file.body, "application/octet-stream"));
  REQUIRE(uploaded.contains("id"));
  CHECK(uploaded["position"] == ckpt["position"]);
  const std::string moved = post(cb, "/v1/sessions/restore", {{"checkpoint_id", uploaded["id"]}})["id"];
  CHECK(generate(cb, moved, sampled) == reference);
  // Restoring on the same server works too, any number of times (branching).
  const std::string again = post(ca, "/v1/sessions/restore", {{"checkpoint_id", ckpt["id"]}})["id"];
  CHECK(generate(ca, again, sampled) == reference);
  CHECK(json_of(ca.request("GET", "/v1/sessions/" + again))["transcript"].size() == 3);  // prefix, two replies

  // Damaged uploads are refused exactly as a damaged file is.
  for (const size_t at : {size_t{3}, file.body.size() / 2, file.body.size() - 3}) {
    std::string bad = file.body;
    bad[at] = static_cast<char>(bad[at] ^ 0x5a);
    const auto r = cb.request("POST", "/v1/checkpoints", bad, "application/octet-stream");
    CHECK(r.status == 400);
    CHECK(json_of(r)["error"]["code"] == "invalid_checkpoint");
  }
  const auto truncated = cb.request("POST", "/v1/checkpoints", file.body.substr(0, file.body.size() - 100), "application/octet-stream");
  CHECK(truncated.status == 400);
  CHECK(json_of(cb.request("GET", "/v1/checkpoints"))["data"].size() == 1);

  CHECK(cb.request("DELETE", "/v1/checkpoints/" + uploaded["id"].get<std::string>()).status == 200);
  CHECK(json_of(cb.request("GET", "/v1/checkpoints"))["data"].empty());
}

TEST_CASE("server: checkpoint quotas per key", "[server]") {
  TestServer srv([](serve::ServerConfig& c) { c.checkpoint_quota_count = 2; });
  const auto c = srv.client();
  const std::string id = post(c, "/v1/sessions", {{"prefix", "quota"}})["id"];
  post(c, "/v1/sessions/" + id + "/checkpoint");
  const std::string second = post(c, "/v1/sessions/" + id + "/checkpoint")["id"];
  const json refused = post(c, "/v1/sessions/" + id + "/checkpoint", json::object(), 429);
  CHECK(refused["error"]["code"] == "checkpoint_quota_exceeded");
  CHECK(c.request("DELETE", "/v1/checkpoints/" + second).status == 200);
  post(c, "/v1/sessions/" + id + "/checkpoint");
}

TEST_CASE("server: a checkpoint carries the chat transcript to another server and through a restart", "[server]") {
  TestServer a, b;
  const auto ca = a.client(), cb = b.client();
  const std::string id =
      post(ca, "/v1/sessions", {{"messages", {{{"role", "system"}, {"content", "Be brief. \"Quoted\", ünïcode"}}}}})["id"];
  generate(ca, id, {{"messages", {{{"role", "user"}, {"content", "Hello\nthere"}}}}});
  const json transcript = json_of(ca.request("GET", "/v1/sessions/" + id))["transcript"];
  REQUIRE(transcript.size() == 3);
  CHECK(transcript[2]["role"] == "assistant");

  const json ckpt = post(ca, "/v1/sessions/" + id + "/checkpoint");
  CHECK(ckpt["messages"] == 3);
  const auto file = ca.request("GET", "/v1/checkpoints/" + ckpt["id"].get<std::string>());
  REQUIRE(file.status == 200);
  const json uploaded = json_of(cb.request("POST", "/v1/checkpoints", file.body, "application/octet-stream"));
  CHECK(uploaded["messages"] == 3);
  CHECK(json_of(cb.request("GET", "/v1/checkpoints"))["data"][0]["messages"] == 3);
  const json restored = post(cb, "/v1/sessions/restore", {{"checkpoint_id", uploaded["id"]}});
  CHECK(restored["transcript"] == transcript);
  CHECK(restored["position"] == ckpt["position"]);

  // The conversation goes on there as a chat: the restored transcript is a prefix of what an
  // OpenAI client sends, so only the new message is prefilled.
  json messages = transcript;
  messages.push_back({{"role", "user"}, {"content", "And now?"}});
  const json reply = post(cb, "/v1/chat/completions",
                          {{"session_id", restored["id"]}, {"messages", messages}, {"max_tokens", 4}});
  CHECK(reply["usage"]["prompt_tokens_details"]["cached_tokens"] == ckpt["position"]);
  CHECK(json_of(cb.request("GET", "/v1/sessions/" + restored["id"].get<std::string>()))["transcript"].size() == 5);

  // The transcript lives in the state file, so a restarted server restores it too.
  const std::string dir = b.state_dir();
  b.stop();
  TestServer again(dir, {});
  CHECK(post(again.client(), "/v1/sessions/restore", {{"checkpoint_id", uploaded["id"]}})["transcript"] == transcript);
}
