// mhla-server on the GPU (--device cuda), in this process on loopback, against the same server
// on the CPU: greedy completions (whole, streamed, n > 1) and sampled ones (sampled on the
// device, or on the host with log-probabilities) give the CPU's tokens at f32, session
// turns prefill only their new text and every session operation (fork, append, undo,
// regenerate, a policy change that moves the state to another device model) gives the CPU's results,
// checkpoints move between the GPU and the CPU both ways, and with few state slots sessions go
// to disk and requests wait for a slot instead of failing.
//
// At f32 the GPU's logits equal the CPU's to about 1e-6 (tests/cuda/test_model_gpu.cpp), so
// greedy tokens agree; bf16 and f16 are only checked to run.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "mhla/model.hpp"
#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

// The test models; MHLA_TEST_DATA_DIR in the environment points elsewhere (a binary run on
// another machine than the one it was built on).
const std::string kData = std::getenv("MHLA_TEST_DATA_DIR") ? std::getenv("MHLA_TEST_DATA_DIR") : MHLA_TEST_DATA_DIR;
const std::string kTiny = kData + "/models/tiny";

// The harness's server (tiny model, slide_mean, pieces of 16 tokens) on a device.
std::function<void(serve::ServerConfig&)> on(const std::string& device, const std::string& precision = "f32",
                                             const std::function<void(serve::ServerConfig&)>& more = {}) {
  return [=](serve::ServerConfig& c) {
    c.model_dir = kTiny;
    c.device = device;
    c.precision = precision;
    if (more) more(c);
  };
}

json post(const serve::HttpClient& c, const std::string& target, const json& body = json::object(), int expect = 200) {
  const auto r = c.request("POST", target, body.dump());
  INFO(target << " -> " << r.body);
  REQUIRE(r.status == expect);
  return json::parse(r.body);
}

json get(const serve::HttpClient& c, const std::string& target) {
  const auto r = c.request("GET", target);
  INFO(target << " -> " << r.body);
  REQUIRE(r.status == 200);
  return json::parse(r.body);
}

json session_generate(const serve::HttpClient& c, const std::string& id, const json& extra) {
  json body = {{"max_tokens", 6}, {"temperature", 0}, {"stream", false}, {"ignore_eos", true}};
  body.update(extra);
  return post(c, "/v1/sessions/" + id + "/generate", body);
}

json tokens_of(const json& reply) { return reply["choices"][0]["token_ids"]; }

// A gauge settles once the engine has finished the step that answered the last request.
double settled_metric(const serve::HttpClient& c, const std::string& metric, double want) {
  double value = metric_value(c, metric);
  for (int i = 0; i < 100 && value != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    value = metric_value(c, metric);
  }
  return value;
}

// What a session holds, less its sizes (a GPU session reports the slot it occupies).
json summary(const serve::HttpClient& c, const std::string& id) {
  const json info = get(c, "/v1/sessions/" + id);
  return {info["position"], info["policy"], info["turns"], info["transcript"]};
}

// Where a session is and what it holds: the part a checkpoint carries.
json carried(const serve::HttpClient& c, const std::string& id) {
  const json info = get(c, "/v1/sessions/" + id);
  return {info["position"], info["policy"], info["transcript"]};
}

// Every session operation once; returns each result in order.
std::vector<json> session_script(const serve::HttpClient& c) {
  std::vector<json> out;
  const std::string id = post(c, "/v1/sessions", {{"prefix", "Once upon a time"}, {"policy", "strict"}})["id"];
  out.push_back(tokens_of(session_generate(c, id, {{"text", " there was"}})));
  const std::string fork = post(c, "/v1/sessions/" + id + "/fork")["id"];
  // Past the 32-token trained window: the session moves from strict to slide_mean.
  out.push_back(tokens_of(session_generate(c, id, {{"text", " a fox"}, {"policy", "slide_mean"}, {"max_tokens", 30}})));
  // The fork stays strict: it stops at the window.
  const json stopped = session_generate(c, fork, {{"text", " and"}, {"max_tokens", 40}});
  out.push_back(tokens_of(stopped));
  out.push_back(stopped["choices"][0]["finish_reason"]);
  // An append opens a turn; more input joins it, with a copy of the session kept for a rollback.
  post(c, "/v1/sessions/" + id + "/append", {{"tokens", {5, 6, 7}}});
  out.push_back(tokens_of(session_generate(c, id, {{"text", " more"}})));
  out.push_back(summary(c, id));
  post(c, "/v1/sessions/" + id + "/undo");
  out.push_back(summary(c, id));
  // The turn that changed the policy, again: its start was saved under strict.
  out.push_back(tokens_of(post(c, "/v1/sessions/" + id + "/regenerate",
                               {{"max_tokens", 6}, {"temperature", 0}, {"stream", false}, {"ignore_eos", true}})));
  out.push_back(summary(c, id));
  out.push_back(summary(c, fork));
  return out;
}

}  // namespace

TEST_CASE("GPU server: greedy completions give the CPU server's tokens at f32", "[gpu][server]") {
  TestServer cpu(on("cpu")), gpu(on("cuda"));
  const auto cc = cpu.client(), gc = gpu.client();

  const json health = get(gc, "/health");
  CHECK(health["device"] == "cuda");
  CHECK(health["precision"] == "f32");
  const json model = get(gc, "/v1/models")["data"][0];
  CHECK(model["device"] == "cuda");
  CHECK(model["precision"] == "f32");
  CHECK(model["state_slots"].get<int>() > 0);
  CHECK(metric_value(gc, "mhla_device_info{device=\"cuda\",precision=\"f32\"}") == 1);
  CHECK(metric_value(gc, "mhla_device_state_slots") == model["state_slots"].get<double>());

  // A prompt inside one prefill piece, and one over several pieces that generates past the
  // trained window (slide_mean).
  for (const std::string prompt :
       {"The quick brown fox", "a much longer prompt that spans more than one prefill piece of sixteen tokens"}) {
    INFO(prompt);
    const json body = {{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"ignore_eos", true}};
    const json expected = post(cc, "/v1/completions", body)["choices"][0];
    const json got = post(gc, "/v1/completions", body)["choices"][0];
    CHECK(got["token_ids"] == expected["token_ids"]);
    CHECK(got["text"] == expected["text"]);
    const auto streamed = stream_tokens(gc, "/v1/completions", body);
    CHECK(streamed.done);
    CHECK(json(streamed.tokens) == expected["token_ids"]);
    // n > 1 forks the prompt's slot on the device: greedy choices are all the same.
    json several = body;
    several["n"] = 3;
    const json choices = post(gc, "/v1/completions", several)["choices"];
    REQUIRE(choices.size() == 3);
    for (const auto& ch : choices) CHECK(ch["token_ids"] == expected["token_ids"]);
  }
  // Every slot is back once the requests are done.
  CHECK(settled_metric(gc, "mhla_device_state_slots_in_use", 0) == 0);
}

TEST_CASE("GPU server: sampled completions, sampled on the device, give the CPU server's tokens at f32",
          "[gpu][server]") {
  TestServer cpu(on("cpu")), gpu(on("cuda"));
  const auto cc = cpu.client(), gc = gpu.client();
  const json rules[] = {
      {{"temperature", 0.9}, {"seed", 5}},
      {{"temperature", 0.8}, {"top_p", 0.9}, {"top_k", 20}, {"repetition_penalty", 1.2}, {"seed", 6}},
      {{"temperature", 1.3}, {"min_p", 0.05}, {"seed", 7}, {"n", 3}},
      // Log-probabilities need the logits on the host: sampled there.
      {{"temperature", 0.9}, {"seed", 8}, {"logprobs", 2}},
  };
  for (const json& rule : rules) {
    INFO(rule.dump());
    json body = {{"prompt", "Once upon a time there was"}, {"max_tokens", 32}, {"ignore_eos", true}};
    body.update(rule);
    const json expected = post(cc, "/v1/completions", body)["choices"];
    const json got = post(gc, "/v1/completions", body)["choices"];
    REQUIRE(got.size() == expected.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i]["token_ids"] == expected[i]["token_ids"]);
  }
  CHECK(settled_metric(gc, "mhla_device_state_slots_in_use", 0) == 0);
}

TEST_CASE("GPU server: a session's second turn prefills only the new text, as on the CPU", "[gpu][server]") {
  TestServer cpu(on("cpu")), gpu(on("cuda"));
  std::vector<json> replies;
  for (const auto* srv : {&cpu, &gpu}) {
    const auto c = srv->client();
    const std::string id = post(c, "/v1/sessions", {{"prefix", "Once upon a time"}})["id"];
    const json first = session_generate(c, id, {{"text", " there was"}});
    const long long position = get(c, "/v1/sessions/" + id)["position"];
    const double prefilled = metric_value(c, "mhla_prompt_tokens_total");
    const json second = session_generate(c, id, {{"text", " and then"}});
    const long long cached = second["usage"]["prompt_tokens_details"]["cached_tokens"];
    const long long prompt = second["usage"]["prompt_tokens"];
    CHECK(cached == position);
    CHECK(prompt > cached);
    // Only the new text went through the model.
    CHECK(metric_value(c, "mhla_prompt_tokens_total") - prefilled == static_cast<double>(prompt - cached));
    CHECK(get(c, "/v1/sessions/" + id)["position"] == position + (prompt - cached) + 6);
    replies.push_back(tokens_of(first));
    replies.push_back(tokens_of(second));

    // Chat turns sent whole, as OpenAI clients do: the session's state covers the first.
    const std::string chat_id = post(c, "/v1/sessions")["id"];
    json chat = {{"session_id", chat_id}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 6},
                 {"temperature", 0}};
    const json one = post(c, "/v1/chat/completions", chat);
    const long long after_one = get(c, "/v1/sessions/" + chat_id)["position"];
    chat["messages"].push_back(one["choices"][0]["message"]);
    chat["messages"].push_back({{"role", "user"}, {"content", "and then?"}});
    const json two = post(c, "/v1/chat/completions", chat);
    CHECK(two["usage"]["prompt_tokens_details"]["cached_tokens"] == after_one);
    replies.push_back(one["choices"][0]["message"]);
    replies.push_back(two["choices"][0]["message"]);
  }
  CHECK(replies[0] == replies[4]);
  CHECK(replies[1] == replies[5]);
  CHECK(replies[2] == replies[6]);
  CHECK(replies[3] == replies[7]);
}

TEST_CASE("GPU server: fork, undo, regenerate and a policy change give the CPU server's results", "[gpu][server]") {
  TestServer cpu(on("cpu")), gpu(on("cuda"));
  const auto expected = session_script(cpu.client());
  const auto got = session_script(gpu.client());
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("step " << i);
    CHECK(got[i] == expected[i]);
  }
  CHECK(expected[3] == "length");  // the strict fork stopped at the window
}

TEST_CASE("GPU server: checkpoints move between the GPU and the CPU and continue identically", "[gpu][server]") {
  TestServer cpu(on("cpu")), gpu(on("cuda"));
  const auto cc = cpu.client(), gc = gpu.client();
  const auto move = [](const serve::HttpClient& from, const std::string& id, const serve::HttpClient& to) {
    const json ckpt = post(from, "/v1/sessions/" + id + "/checkpoint");
    const auto file = from.request("GET", "/v1/checkpoints/" + ckpt["id"].get<std::string>());
    REQUIRE(file.status == 200);
    const json uploaded = json::parse(to.request("POST", "/v1/checkpoints", file.body, "application/octet-stream").body);
    REQUIRE(uploaded.contains("id"));
    CHECK(uploaded["position"] == ckpt["position"]);
    return post(to, "/v1/sessions/restore", {{"checkpoint_id", uploaded["id"]}})["id"].get<std::string>();
  };
  const json greedy = {{"max_tokens", 12}};
  // Sampled, without a seed: the sampler's random position travels too.
  const json sampled = {{"max_tokens", 12}, {"temperature", 0.9}};

  // Saved on the GPU, restored on the CPU.
  const std::string id = post(gc, "/v1/sessions", {{"prefix", "A story that moves between servers"}})["id"];
  session_generate(gc, id, {{"temperature", 0.9}, {"seed", 7}});
  const std::string on_cpu = move(gc, id, cc);
  CHECK(carried(cc, on_cpu) == carried(gc, id));
  const json gpu_greedy = tokens_of(session_generate(gc, id, greedy));
  const json cpu_greedy = tokens_of(session_generate(cc, on_cpu, greedy));
  CHECK(cpu_greedy == gpu_greedy);
  const json gpu_sampled = tokens_of(session_generate(gc, id, sampled));
  CHECK(tokens_of(session_generate(cc, on_cpu, sampled)) == gpu_sampled);

  // And back: saved on the CPU, restored on the GPU, past the trained window.
  const std::string on_gpu = move(cc, on_cpu, gc);
  CHECK(carried(gc, on_gpu) == carried(cc, on_cpu));
  const json long_turn = {{"max_tokens", 24}, {"text", " and the end"}};
  CHECK(tokens_of(session_generate(gc, on_gpu, long_turn)) == tokens_of(session_generate(cc, on_cpu, long_turn)));
  CHECK(carried(gc, on_gpu) == carried(cc, on_cpu));
}

TEST_CASE("GPU server: with few state slots sessions go to disk and requests wait, nothing fails", "[gpu][server]") {
  // Three sequences' worth of state memory: three slots per policy.
  const std::size_t state = Model::load(kTiny).max_state_bytes();
  TestServer cpu(on("cpu")), gpu(on("cuda", "f32", [&](serve::ServerConfig& c) { c.state_memory = 3 * state; }));
  const auto cc = cpu.client(), gc = gpu.client();
  CHECK(get(gc, "/v1/models")["data"][0]["state_slots"] == 3);

  // Six sessions, two turns each, on three slots.
  std::vector<json> expected, got;
  for (const auto* srv : {&cpu, &gpu}) {
    const auto c = srv->client();
    auto& out = srv == &cpu ? expected : got;
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i)
      ids.push_back(post(c, "/v1/sessions", {{"prefix", fmt::format("session number {}", i)}})["id"]);
    for (int turn = 0; turn < 2; ++turn)
      for (const auto& id : ids) out.push_back(tokens_of(session_generate(c, id, {{"text", fmt::format(" turn {}", turn)}})));
    for (const auto& id : ids) out.push_back(summary(c, id));
  }
  CHECK(got == expected);
  CHECK(metric_value(gc, "mhla_session_evictions_total") > 0);
  CHECK(metric_value(gc, "mhla_device_state_slots_in_use") <= 3);

  // Eight streams at once on three slots: the rest wait their turn.
  const json body = {{"prompt", "many at once"}, {"max_tokens", 16}, {"temperature", 0}, {"ignore_eos", true}};
  const json reference = post(cc, "/v1/completions", body)["choices"][0]["token_ids"];
  std::vector<std::future<Streamed>> streams;
  for (int i = 0; i < 8; ++i)
    streams.push_back(std::async(std::launch::async, [&] { return stream_tokens(gpu.client(), "/v1/completions", body); }));
  for (auto& f : streams) {
    const Streamed s = f.get();
    CHECK(s.status == 200);
    CHECK(s.done);
    CHECK(json(s.tokens) == reference);
  }
  // More choices than the slots is refused up front.
  const auto too_many = gc.request("POST", "/v1/completions", json{{"prompt", "x"}, {"n", 4}}.dump());
  CHECK(too_many.status == 400);
}

TEST_CASE("GPU server: bf16 and f16 serve completions and sessions", "[gpu][server]") {
  for (const std::string precision : {"bf16", "f16"}) {
    INFO(precision);
    TestServer gpu(on("cuda", precision));
    const auto c = gpu.client();
    CHECK(get(c, "/health")["precision"] == precision);
    CHECK(get(c, "/v1/models")["data"][0]["precision"] == precision);
    CHECK(metric_value(c, "mhla_device_info{device=\"cuda\",precision=\"" + precision + "\"}") == 1);
    const json reply =
        post(c, "/v1/completions", {{"prompt", "The quick brown fox"}, {"max_tokens", 40}, {"ignore_eos", true}});
    CHECK(reply["choices"][0]["token_ids"].size() == 40);
    const std::string id = post(c, "/v1/sessions", {{"prefix", "Once upon a time"}})["id"];
    CHECK(tokens_of(session_generate(c, id, {{"text", " there"}})).size() == 6);
    CHECK(get(c, "/v1/sessions/" + id)["position"].get<long long>() > 6);
  }
}
