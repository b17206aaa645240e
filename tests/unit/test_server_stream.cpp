// Continuous batching on loopback: many concurrent streams each get exactly their tokens
// alone, a long prefill does not stall running streams, a client that hangs up frees its
// slot, and the prefix cache reuses a shared document without changing any result.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "support/server_harness.hpp"

using namespace mhla;
using namespace mhla::test;
using nlohmann::json;

namespace {

json prompt_for(int i) {
  std::string text = "stream " + std::to_string(i) + ":";
  for (int k = 0; k < i % 7; ++k) text += " and some more words to prefill";
  return {{"prompt", text}, {"max_tokens", 24}, {"temperature", 0}};
}

// Waits until pred holds (polling), or fails after the timeout.
template <class F> bool eventually(F pred, double seconds = 10) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

}  // namespace

TEST_CASE("server: 32 concurrent streams each receive exactly their tokens alone", "[server]") {
  constexpr int kClients = 32;
  TestServer srv([](serve::ServerConfig& c) { c.prefix_cache_memory = 0; });
  const auto client = srv.client();
  std::vector<std::vector<int>> alone(kClients), together(kClients);
  for (int i = 0; i < kClients; ++i) {
    const auto s = stream_tokens(client, "/v1/completions", prompt_for(i));
    REQUIRE(s.done);
    alone[static_cast<size_t>(i)] = s.tokens;
  }
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] {
      ++ready;
      while (ready.load() < kClients) std::this_thread::yield();
      together[static_cast<size_t>(i)] = stream_tokens(client, "/v1/completions", prompt_for(i)).tokens;
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    INFO("client " << i);
    CHECK(!alone[static_cast<size_t>(i)].empty());
    CHECK(together[static_cast<size_t>(i)] == alone[static_cast<size_t>(i)]);
  }
}

TEST_CASE("server: a 16K-token prefill does not stall running streams", "[server]") {
  TestServer srv([](serve::ServerConfig& c) {
    c.prefill_chunk = 64;
    c.step_tokens = 256;
    c.max_tokens_limit = 100000;
  });
  const auto client = srv.client();
  std::atomic<bool> stop{false};
  std::vector<double> times;
  std::mutex mutex;
  const auto t0 = std::chrono::steady_clock::now();
  const auto now = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::thread running([&] {
    client.stream("POST", "/v1/completions",
                  json({{"prompt", "running"}, {"max_tokens", 100000}, {"ignore_eos", true}, {"stream", true}}).dump(),
                  [&](const serve::SseEvent&) {
                    std::lock_guard lock(mutex);
                    times.push_back(now());
                    return !stop.load();
                  });
  });
  REQUIRE(eventually([&] {
    std::lock_guard lock(mutex);
    return times.size() > 20;
  }));
  std::vector<int> ids(16384);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = 3 + static_cast<int>(i * 7 % 90);
  const double sent = now();
  const auto big = stream_tokens(client, "/v1/completions", {{"prompt", ids}, {"max_tokens", 1}});
  const double answered = now();
  stop = true;
  running.join();
  REQUIRE(big.status == 200);
  CHECK(big.progress_events > 10);  // a long prefill reports its progress

  std::vector<double> during;
  for (double t : times)
    if (t >= sent && t <= answered) during.push_back(t);
  double max_gap = 0;
  for (size_t i = 1; i < during.size(); ++i) max_gap = std::max(max_gap, during[i] - during[i - 1]);
  INFO("prefill took " << answered - sent << " s; the running stream got " << during.size()
                       << " tokens meanwhile, the longest gap " << max_gap << " s");
  // The prefill needs ~86 steps of 3 pieces and the running stream gets a token in every
  // one (a step takes about a millisecond here). Without continuous batching it would get
  // none until the prefill ends; the bounds leave room for a busy 2-core machine.
  CHECK(during.size() >= 40);
  CHECK(max_gap < (answered - sent) / 3);
}

TEST_CASE("server: a client that disconnects mid-stream frees its slot", "[server]") {
  // Room for exactly one sequence: a second request waits until the first lets go.
  TestServer srv([](serve::ServerConfig& c) {
    c.state_memory = 10240;
    c.max_tokens_limit = 100000;
  });
  const auto client = srv.client();
  const json endless = {{"prompt", "forever"}, {"max_tokens", 100000}, {"ignore_eos", true}, {"stream", true}};
  const auto first = stream_tokens(client, "/v1/completions", endless, 5);  // hangs up after 5 tokens
  CHECK(first.tokens.size() == 5);
  CHECK(eventually([&] { return metric_value(client, "mhla_active_streams") == 0; }, 5));
  CHECK(metric_value(client, "mhla_state_memory_bytes") == 0);
  CHECK(metric_value(client, "mhla_cancelled_total") == 1);
  CHECK(client.request("POST", "/v1/completions", json({{"prompt", "next"}, {"max_tokens", 3}}).dump()).status == 200);

  // A request waiting for memory runs as soon as the stream ahead of it goes.
  std::atomic<bool> release{false}, second_done{false};
  std::thread holder([&] {
    client.stream("POST", "/v1/completions", endless.dump(), [&](const serve::SseEvent&) { return !release.load(); });
  });
  CHECK(eventually([&] { return metric_value(client, "mhla_active_streams") == 1; }));
  std::thread waiter([&] {
    CHECK(client.request("POST", "/v1/completions", json({{"prompt", "queued"}, {"max_tokens", 3}}).dump()).status == 200);
    second_done = true;
  });
  CHECK(eventually([&] { return metric_value(client, "mhla_queued_requests") == 1; }));
  CHECK(!second_done);
  release = true;
  holder.join();
  waiter.join();
  CHECK(second_done);

  // A session's stream: hanging up ends the generation and the session stays usable.
  const auto session = json_of(client.request("POST", "/v1/sessions", json({{"prefix", "hello"}}).dump()))["id"].get<std::string>();
  const auto gone = stream_tokens(client, "/v1/sessions/" + session + "/generate", endless, 3);
  CHECK(gone.tokens.size() == 3);
  REQUIRE(eventually([&] { return !json_of(client.request("GET", "/v1/sessions/" + session))["busy"].get<bool>(); }));
  CHECK(client.request("POST", "/v1/sessions/" + session + "/generate", json({{"max_tokens", 2}, {"stream", false}}).dump())
            .status == 200);
}

TEST_CASE("server: the prefix cache reuses a shared document without changing results", "[server]") {
  std::string document = "Document:";
  for (int i = 0; i < 20; ++i) document += " line " + std::to_string(i) + " of the shared text.";
  const auto ask = [&](const serve::HttpClient& c, int q) {
    const auto r = c.request("POST", "/v1/completions",
                             json({{"prompt", document + " Question " + std::to_string(q) + "?"}, {"max_tokens", 8}, {"temperature", 0}})
                                 .dump());
    REQUIRE(r.status == 200);
    return json_of(r);
  };
  TestServer cached, uncached([](serve::ServerConfig& c) { c.prefix_cache_memory = 0; });
  long long reused = 0;
  for (int q = 0; q < 6; ++q) {
    const json a = ask(cached.client(), q), b = ask(uncached.client(), q);
    CHECK(a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]);
    reused += a["usage"]["prompt_tokens_details"]["cached_tokens"].get<long long>();
    CHECK(b["usage"]["prompt_tokens_details"]["cached_tokens"] == 0);
  }
  CHECK(reused > 0);
  CHECK(metric_value(cached.client(), "mhla_prefix_cache_hits_total") >= 4);
  CHECK(metric_value(uncached.client(), "mhla_prefix_cache_hits_total") == 0);
}
