// mhla-server's endpoints on loopback: completions equal what a Session computes alone, n > 1
// forks the prompt's state, stop strings, logprobs and the strict window, stateful sessions
// (append, generate, fork, undo, regenerate, delete) and chat turns that prefill only what is new.
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "mhla/session.hpp"
#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

const std::string kTiny = std::string(MHLA_TEST_DATA_DIR) + "/models/tiny";

// What the library's Session computes for a text prompt, greedy, as the server is set up.
GenerateResult alone(const std::string& prompt, int max_tokens) {
  static const Model model = Model::load(kTiny);
  static const Tokenizer tok = Tokenizer::load(kTiny + "/tokenizer.model");
  SessionOptions o;
  o.policy = ContextPolicy::slide_mean;
  o.prefill_chunk = 16;
  o.sampling.temperature = 0;
  Session s(model, &tok, o);
  s.append(s.encode(prompt, true));
  StopCriteria stop;
  stop.max_tokens = max_tokens;
  stop.eos_id = model.config().eos_token_id;
  return s.generate(stop);
}

json post(const serve::HttpClient& c, const std::string& target, const json& body, int expect = 200) {
  const auto r = c.request("POST", target, body.dump());
  INFO(target << " -> " << r.body);
  REQUIRE(r.status == expect);
  return json::parse(r.body);
}

}  // namespace

TEST_CASE("server: completions equal a session computed alone, whole and streamed", "[server]") {
  TestServer srv;
  const auto c = srv.client();
  for (const std::string prompt : {"The quick brown fox", "a much longer prompt that spans more than one prefill piece of sixteen tokens"}) {
    const auto ref = alone(prompt, 20);
    const json whole = post(c, "/v1/completions", {{"prompt", prompt}, {"max_tokens", 20}, {"temperature", 0}});
    CHECK(whole["choices"][0]["token_ids"].get<std::vector<int>>() == ref.tokens);
    CHECK(whole["choices"][0]["text"] == ref.text);
    CHECK(whole["choices"][0]["finish_reason"] == std::string(to_string(ref.reason)));
    CHECK(whole["usage"]["completion_tokens"] == ref.tokens.size());

    const auto s = stream_tokens(c, "/v1/completions",
                                 {{"prompt", prompt}, {"max_tokens", 20}, {"temperature", 0},
                                  {"stream_options", {{"include_usage", true}}}});
    CHECK(s.status == 200);
    CHECK(s.done);
    CHECK(s.tokens == ref.tokens);
    CHECK(s.text == ref.text);
    CHECK(s.usage["total_tokens"] == whole["usage"]["total_tokens"]);
  }
}

TEST_CASE("server: models, health and metrics", "[server]") {
  TestServer srv;
  const auto c = srv.client();
  const auto models = json_of(c.request("GET", "/v1/models"));
  CHECK(models["data"][0]["id"] == "tiny");
  CHECK(models["data"][0]["trained_window"] == 32);
  CHECK(models["data"][0]["context_policies"].size() == 3);
  CHECK(c.request("GET", "/v1/models/tiny").status == 200);
  CHECK(json_of(c.request("GET", "/health"))["status"] == "ok");
  post(c, "/v1/completions", {{"prompt", "metrics please"}, {"max_tokens", 3}});
  // A request is counted once its reply is written, which can be just after the client has
  // read it: wait briefly for the count before reading the rest.
  const std::string counted = "mhla_requests_total{route=\"/v1/completions\",status=\"200\"} 1";
  auto metrics = c.request("GET", "/metrics");
  for (int i = 0; i < 200 && metrics.body.find(counted) == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    metrics = c.request("GET", "/metrics");
  }
  CHECK(metrics.content_type.starts_with("text/plain"));
  for (const char* name : {"mhla_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
                           "mhla_time_to_first_token_seconds_count 1", "mhla_inter_token_latency_seconds_bucket",
                           "mhla_generated_tokens_per_second", "mhla_active_sessions", "mhla_state_memory_bytes",
                           "mhla_session_evictions_total", "mhla_prefix_cache_hits_total"})
    CHECK(metrics.body.find(name) != std::string::npos);
}

TEST_CASE("server: n > 1 forks the prompt's state once, each choice its own seed", "[server]") {
  TestServer srv;
  const auto c = srv.client();
  const json base = {{"prompt", "forked"}, {"max_tokens", 12}, {"temperature", 0.9}, {"ignore_eos", true}};
  const double prompt_before = metric_value(c, "mhla_prompt_tokens_total");
  json three = base;
  three["n"] = 3;
  three["seed"] = 41;
  const json r = post(c, "/v1/completions", three);
  REQUIRE(r["choices"].size() == 3);
  const auto prompt_tokens = r["usage"]["prompt_tokens"].get<double>();
  CHECK(metric_value(c, "mhla_prompt_tokens_total") - prompt_before == prompt_tokens);  // prefilled once
  CHECK(r["usage"]["completion_tokens"] == 36);
  for (int i = 0; i < 3; ++i) {
    json one = base;
    one["seed"] = 41 + i;
    CHECK(post(c, "/v1/completions", one)["choices"][0]["token_ids"] == r["choices"][i]["token_ids"]);
  }
  CHECK(r["choices"][0]["token_ids"] != r["choices"][1]["token_ids"]);

  const auto s = stream_tokens(c, "/v1/completions", three);
  CHECK(s.done);
  CHECK(s.tokens.size() == 36);
}

TEST_CASE("server: stop strings, logprobs and the strict window", "[server]") {
  TestServer srv;
  const auto c = srv.client();
  const json greedy = {{"prompt", "stop here"}, {"max_tokens", 20}, {"temperature", 0}, {"ignore_eos", true}};
  const std::string full = post(c, "/v1/completions", greedy)["choices"][0]["text"];
  REQUIRE(full.size() > 6);
  json stopped = greedy;
  stopped["stop"] = full.substr(3, 2);
  const json r = post(c, "/v1/completions", stopped);
  CHECK(r["choices"][0]["finish_reason"] == "stop");
  CHECK(r["choices"][0]["text"] == full.substr(0, full.find(full.substr(3, 2))));

  json lp = greedy;
  lp["logprobs"] = 2;
  const json l = post(c, "/v1/completions", lp)["choices"][0]["logprobs"];
  CHECK(l["tokens"].size() == 20);
  CHECK(l["top_logprobs"][0].size() == 2);
  CHECK(l["token_logprobs"][0].get<double>() <= 0);

  // Under strict the trained window (32 tokens) ends generation with "length".
  json strict = greedy;
  strict["policy"] = "strict";
  strict["max_tokens"] = 100;
  const json w = post(c, "/v1/completions", strict);
  CHECK(w["choices"][0]["finish_reason"] == "length");
  CHECK(w["usage"]["total_tokens"] == 32);
}

TEST_CASE("server: stateful sessions append, generate, fork, undo, regenerate and delete", "[server]") {
  TestServer srv;
  const auto c = srv.client();
  const json created = post(c, "/v1/sessions", {{"prefix", "Once upon"}});
  const std::string id = created["id"];
  const std::string base = "/v1/sessions/" + id;
  CHECK(created["position"] > 0);

  // A turn on the session computes what one Session computes.
  const auto ref = [&] {
    const Model model = Model::load(kTiny);
    const Tokenizer tok = Tokenizer::load(kTiny + "/tokenizer.model");
    SessionOptions o;
    o.policy = ContextPolicy::slide_mean;
    o.prefill_chunk = 16;
    o.sampling.temperature = 0;
    Session s(model, &tok, o);
    s.append(s.encode("Once upon", true));
    s.append(s.encode(" a time", false));
    StopCriteria stop;
    stop.max_tokens = 6;
    stop.eos_id = 2;
    return s.generate(stop);
  }();
  const json turn = post(c, base + "/generate", {{"text", " a time"}, {"max_tokens", 6}, {"temperature", 0}, {"stream", false}});
  CHECK(turn["choices"][0]["token_ids"].get<std::vector<int>>() == ref.tokens);
  CHECK(turn["session_id"] == id);

  json info = json_of(c.request("GET", base));
  CHECK(info["transcript"].size() == 3);
  CHECK(info["transcript"][2]["role"] == "assistant");
  CHECK(info["turns"] == 1);
  const long long position = info["position"];

  const std::string fork = post(c, base + "/fork", json::object())["id"];
  const json next = {{"max_tokens", 5}, {"temperature", 0}, {"stream", false}};
  const auto a = post(c, base + "/generate", next)["choices"][0]["token_ids"];
  const auto b = post(c, "/v1/sessions/" + fork + "/generate", next)["choices"][0]["token_ids"];
  CHECK(a == b);

  // Undo twice: back before " a time"; regenerate needs a turn with a reply.
  post(c, base + "/undo", json::object());
  info = post(c, base + "/undo", json::object());
  CHECK(info["position"] == created["position"]);
  CHECK(info["transcript"].size() == 1);
  post(c, base + "/undo", json::object(), 409);
  post(c, base + "/regenerate", next, 409);

  // Regenerate the fork's last turn greedily: the same reply, one assistant message.
  const json again = post(c, "/v1/sessions/" + fork + "/regenerate", next);
  CHECK(again["choices"][0]["token_ids"] == b);
  info = json_of(c.request("GET", "/v1/sessions/" + fork));
  CHECK(info["position"] == position + 5);
  CHECK(info["transcript"].size() == 4);

  const json appended = post(c, base + "/append", {{"tokens", {5, 6, 7}}});
  CHECK(appended["position"] == created["position"].get<long long>() + 3);
  CHECK(json_of(c.request("GET", "/v1/sessions"))["data"].size() == 2);
  CHECK(c.request("DELETE", base).status == 200);
  CHECK(c.request("GET", base).status == 404);
}

TEST_CASE("server: chat completions, and chat turns on a session prefill only new messages", "[server]") {
  TestServer srv;
  const auto c = srv.client();
  json chat = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 6}, {"temperature", 0}};
  const json plain = post(c, "/v1/chat/completions", chat);
  CHECK(plain["object"] == "chat.completion");
  CHECK(plain["choices"][0]["message"]["role"] == "assistant");

  const auto streamed = stream_tokens(c, "/v1/chat/completions", chat);
  CHECK(streamed.done);
  CHECK(streamed.text == plain["choices"][0]["message"]["content"]);

  const std::string id = post(c, "/v1/sessions", json::object())["id"];
  chat["session_id"] = id;
  const json first = post(c, "/v1/chat/completions", chat);
  CHECK(first["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]);
  const long long after_first = json_of(c.request("GET", "/v1/sessions/" + id))["position"];
  chat["messages"].push_back(first["choices"][0]["message"]);
  chat["messages"].push_back({{"role", "user"}, {"content", "and then?"}});
  const json second = post(c, "/v1/chat/completions", chat);
  CHECK(second["usage"]["prompt_tokens_details"]["cached_tokens"] == after_first);
  const json info = json_of(c.request("GET", "/v1/sessions/" + id));
  CHECK(info["transcript"].size() == 4);
  CHECK(info["transcript"][3]["content"] == second["choices"][0]["message"]["content"]);
}
