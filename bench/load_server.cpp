// Load figures for mhla-server, measured by a client over loopback against a server started in
// this process (its own threads, the same code as the executable):
//   load       p50/p99 time to first token, inter-token latency and aggregate tokens/s with
//              1, 8, 32 and 128 concurrent streams
//   multiturn  time to first token of turns 1..10 on a session with a long history, against
//              resending the whole history (with and without the prefix cache)
//   prefix     a document asked 20 questions, with the prefix cache and without
// Writes a markdown report (device, date, commit, settings, tables) to --out and stdout.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "mhla/model.hpp"
#include "serve/client.hpp"
#include "serve/server.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string shell_line(const char* cmd) {
  std::string out;
  if (FILE* p = popen(cmd, "r")) {
    char buf[256];
    while (fgets(buf, sizeof buf, p)) out += buf;
    pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

std::string device() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name = "unknown CPU";
  while (std::getline(in, line))
    if (line.starts_with("model name")) {
      name = line.substr(line.find(':') + 2);
      break;
    }
  return fmt::format("{}, {} cores (CPU backend)", name, std::thread::hardware_concurrency());
}

// The 1-minute load average: the machine is shared, so the report says how busy it was.
std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  in >> one;
  return one.empty() ? "unknown" : one;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<size_t>(std::min<double>(static_cast<double>(v.size()) - 1, p * static_cast<double>(v.size())));
  return v[i];
}

struct StreamResult {
  double ttft = 0;
  std::vector<double> gaps;
  int tokens = 0;
};

// One streamed request: time to the first token, the gaps between tokens.
StreamResult stream(const mhla::serve::HttpClient& client, const std::string& target, json body) {
  body["stream"] = true;
  StreamResult r;
  const auto t0 = Clock::now();
  auto last = t0;
  const auto res = client.stream("POST", target, body.dump(), [&](const mhla::serve::SseEvent& e) {
    if (!e.event.empty() || e.data == "[DONE]") return true;
    const auto j = json::parse(e.data);
    if (j.contains("error")) throw std::runtime_error(e.data);
    if (j["choices"].empty() || !j["choices"][0].contains("token_ids")) return true;
    const auto now = Clock::now();
    if (r.tokens == 0)
      r.ttft = std::chrono::duration<double>(now - t0).count();
    else
      r.gaps.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    r.tokens += static_cast<int>(j["choices"][0]["token_ids"].size());
    return true;
  });
  if (res.status != 200) throw std::runtime_error(fmt::format("{} answered {}: {}", target, res.status, res.body));
  return r;
}

struct Bench {
  std::string name;       // the model as reported
  std::string model_dir;  // a real model directory, or empty for the random model
  bool text = false;      // prompts as text (a tokenizer) or as token ids
  int vocab = 0;
  std::string state_dir;
};

std::unique_ptr<mhla::serve::Server> start(const Bench& b, const std::function<void(mhla::serve::ServerConfig&)>& tweak) {
  mhla::serve::ServerConfig c;
  c.model_dir = b.model_dir.empty() ? b.state_dir : b.model_dir;
  c.model_name = b.name;
  c.port = 0;
  c.policy = mhla::ContextPolicy::slide_mean;
  c.state_dir = b.state_dir + "/" + std::to_string(Clock::now().time_since_epoch().count());
  c.log_level = "off";
  c.max_tokens_limit = 100000;
  c.max_sessions = 100000;
  c.state_memory = std::size_t{4} << 30;
  c.device = "cpu";  // the report's figures and device line are the CPU server's, GPU or not
  if (tweak) tweak(c);
  std::unique_ptr<mhla::serve::Server> s;
  if (b.model_dir.empty()) {
    mhla::ModelConfig mc;  // a small configuration with random weights
    mc.hidden_size = 256;
    mc.num_layers = 4;
    mc.num_heads = 4;
    mc.num_kv_heads = 4;
    mc.vocab_size = b.vocab;
    mc.intermediate_size = 768;
    s = std::make_unique<mhla::serve::Server>(c, mhla::Model::random(mc, 32, 1));
  } else {
    s = std::make_unique<mhla::serve::Server>(c);
  }
  s->start();
  return s;
}

mhla::serve::HttpClient client_of(const mhla::serve::Server& s) { return {"127.0.0.1", s.port(), {}, 600}; }

json ids(int n, int vocab, int salt) {
  auto a = json::array();
  for (int i = 0; i < n; ++i) a.push_back(3 + (i * 7 + salt * 13) % (vocab - 3));
  return a;
}

json prompt(const Bench& b, int tokens, int salt) {
  if (!b.text) return ids(tokens, b.vocab, salt);
  std::string s = fmt::format("request {}:", salt);
  while (static_cast<int>(s.size()) < tokens) s += " words";
  return s;
}

std::string load_table(const Bench& b, const std::vector<int>& levels, int prompt_tokens, int max_tokens) {
  auto server = start(b, {});
  const auto client = client_of(*server);
  std::string out = fmt::format(
      "\n### Concurrent streams: {} (prompt ~{} tokens, {} generated per request)\n\n"
      "| streams | requests | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | tokens/s (all streams) |\n"
      "|---:|---:|---:|---:|---:|---:|---:|\n",
      b.name, prompt_tokens, max_tokens);
  for (const int streams : levels) {
    const int per_client = std::max(1, 32 / streams);  // at least 32 requests per level
    std::vector<double> ttft, gaps;
    long long tokens = 0;
    std::mutex mutex;
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (int i = 0; i < streams; ++i)
      threads.emplace_back([&, i] {
        ++ready;
        while (ready.load() < streams) std::this_thread::yield();
        for (int k = 0; k < per_client; ++k) {
          const auto r = stream(client, "/v1/completions",
                                {{"prompt", prompt(b, prompt_tokens, i * 1000 + k)},
                                 {"max_tokens", max_tokens},
                                 {"ignore_eos", true},
                                 {"temperature", 0.8}});
          std::lock_guard lock(mutex);
          ttft.push_back(r.ttft);
          gaps.insert(gaps.end(), r.gaps.begin(), r.gaps.end());
          tokens += r.tokens;
        }
      });
    for (auto& t : threads) t.join();
    const double wall = since(t0);
    out += fmt::format("| {} | {} | {:.1f} ms | {:.1f} ms | {:.2f} ms | {:.2f} ms | {:.0f} |\n", streams,
                       streams * per_client, 1e3 * percentile(ttft, 0.5), 1e3 * percentile(ttft, 0.99),
                       1e3 * percentile(gaps, 0.5), 1e3 * percentile(gaps, 0.99), static_cast<double>(tokens) / wall);
    std::fputs(out.substr(out.rfind("\n|", out.size() - 2) + 1).c_str(), stderr);
  }
  return out;
}

std::string multiturn_table(const Bench& b, int history, int turn_tokens, int reply_tokens) {
  std::string out = fmt::format(
      "\n### Multi-turn: {} ({}-token history first, then 10 turns of {} new tokens and {}-token replies)\n\n"
      "| turn | position before | TTFT, session | TTFT, whole history resent | TTFT, resent + prefix cache |\n"
      "|---:|---:|---:|---:|---:|\n",
      b.name, history, turn_tokens, reply_tokens);
  auto plain = start(b, [](auto& c) { c.prefix_cache_memory = 0; });
  auto cached = start(b, {});
  const auto cp = client_of(*plain), cc = client_of(*cached);
  const json doc = ids(history, b.vocab, 1);
  const auto created = json::parse(cp.request("POST", "/v1/sessions", json({{"prefix_tokens", doc}}).dump()).body);
  const std::string session = created["id"];
  json all = doc;  // the whole conversation, for the stateless requests
  for (int turn = 1; turn <= 10; ++turn) {
    const json input = ids(turn_tokens, b.vocab, 100 + turn);
    const long long before = static_cast<long long>(all.size());
    json sampling = {{"max_tokens", reply_tokens}, {"ignore_eos", true}, {"temperature", 0}};
    json s_body = sampling;
    s_body["tokens"] = input;
    // The reply comes back as token ids; they become part of the history resent below.
    json reply = json::array();
    const auto t0 = Clock::now();
    double ttft = 0;
    cp.stream("POST", "/v1/sessions/" + session + "/generate", [&] { json x = s_body; x["stream"] = true; return x.dump(); }(),
              [&](const mhla::serve::SseEvent& e) {
                if (!e.event.empty() || e.data == "[DONE]") return true;
                const auto j = json::parse(e.data);
                if (j["choices"].empty() || !j["choices"][0].contains("token_ids")) return true;
                if (reply.empty()) ttft = since(t0);
                for (int id : j["choices"][0]["token_ids"]) reply.push_back(id);
                return true;
              });
    for (int id : input) all.push_back(id);
    json resend = sampling;
    resend["prompt"] = all;
    const double whole = stream(cp, "/v1/completions", resend).ttft;
    const double with_cache = stream(cc, "/v1/completions", resend).ttft;
    for (int id : reply) all.push_back(id);
    out += fmt::format("| {} | {} | {:.1f} ms | {:.1f} ms | {:.1f} ms |\n", turn, before, 1e3 * ttft, 1e3 * whole,
                       1e3 * with_cache);
  }
  std::fputs(out.c_str(), stderr);
  return out;
}

std::string prefix_table(const Bench& b, int document, int question, int answer) {
  std::string out = fmt::format(
      "\n### Prefix reuse: {} ({}-token document, 20 questions of {} tokens, {}-token answers, one at a time)\n\n"
      "| prefix cache | TTFT question 1 | TTFT questions 2-20, mean | TTFT questions 2-20, p99 | all 20, wall | hits |\n"
      "|---|---:|---:|---:|---:|---:|\n",
      b.name, document, question, answer);
  for (const bool on : {false, true}) {
    auto server = start(b, [on](auto& c) { c.prefix_cache_memory = on ? std::size_t{1} << 30 : 0; });
    const auto client = client_of(*server);
    const json doc = ids(document, b.vocab, 2);
    std::vector<double> rest;
    double first = 0;
    const auto t0 = Clock::now();
    for (int q = 0; q < 20; ++q) {
      json p = doc;
      for (int id : ids(question, b.vocab, 500 + q)) p.push_back(id);
      const double t = stream(client, "/v1/completions", {{"prompt", p}, {"max_tokens", answer}, {"temperature", 0}, {"ignore_eos", true}}).ttft;
      if (q == 0)
        first = t;
      else
        rest.push_back(t);
    }
    const double wall = since(t0);
    double mean = 0;
    for (double t : rest) mean += t / static_cast<double>(rest.size());
    const auto metrics = client.request("GET", "/metrics").body;
    const auto at = metrics.find("\nmhla_prefix_cache_hits_total ");
    const std::string hits = metrics.substr(at + 30, metrics.find('\n', at + 1) - at - 30);
    out += fmt::format("| {} | {:.1f} ms | {:.1f} ms | {:.1f} ms | {:.2f} s | {} |\n", on ? "on" : "off", 1e3 * first,
                       1e3 * mean, 1e3 * percentile(rest, 0.99), wall, hits);
  }
  std::fputs(out.c_str(), stderr);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Load figures for mhla-server (see the comment at the top of bench/load_server.cpp)"};
  std::string tiny, out, commit;
  bool quick = false;
  app.add_option("--tiny", tiny, "The tiny test model directory (with its tokenizer)")->required();
  app.add_option("--out", out, "Write the markdown report here too");
  app.add_option("--commit", commit, "Commit to report (default: git rev-parse HEAD)");
  app.add_flag("--quick", quick, "Smaller runs (a smoke test)");
  CLI11_PARSE(app, argc, argv);
  if (commit.empty()) {
    commit = shell_line("git rev-parse --short HEAD 2>/dev/null");
    if (!shell_line("git status --porcelain 2>/dev/null").empty()) commit += " with uncommitted changes";
  }
  const auto scratch = std::filesystem::temp_directory_path() / ("mhla-bench-server-" + std::to_string(getpid()));
  std::filesystem::create_directories(scratch);

  const Bench tiny_bench{"tiny", tiny, true, 97, scratch.string()};
  const Bench small_bench{"small-random (hidden 256, 4 layers, vocab 4096, C 64, L 32)", "", false, 4096, scratch.string()};
  const std::vector<int> levels = quick ? std::vector<int>{1, 8} : std::vector<int>{1, 8, 32, 128};

  std::string report = fmt::format(
      "# mhla-server load figures\n\n- device: {}\n- date: {:%Y-%m-%d %H:%M} UTC\n- commit: {}\n"
      "- server: in-process, loopback, 1 I/O thread, prefill piece 64, step budget 256 tokens, slide_mean\n"
      "- client: blocking threads in the same process (one per stream), timings taken as events arrive\n"
      "- TTFT: request sent to first token received; ITL: gap between consecutive tokens of a stream\n"
      "- 1-minute load average before the run: {}\n",
      device(), fmt::gmtime(std::time(nullptr)), commit, load_average());
  report += load_table(tiny_bench, levels, 24, quick ? 16 : 64);
  report += load_table(small_bench, levels, 64, quick ? 16 : 64);
  report += multiturn_table(small_bench, quick ? 1024 : 8192, 64, 32);
  report += prefix_table(small_bench, quick ? 512 : 4096, 24, 16);

  report += fmt::format("\n1-minute load average after the run: {}\n", load_average());
  std::filesystem::remove_all(scratch);
  std::fputs(report.c_str(), stdout);
  if (!out.empty()) std::ofstream(out) << report;
  return 0;
}
