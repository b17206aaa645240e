#include "serve/metrics.hpp"

#include <fmt/format.h>

namespace mhla::serve {

namespace {

constexpr long long kRateWindow = 10;  // seconds averaged by the tokens/s gauge

long long now_second() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string number(double v) { return fmt::format("{}", v); }

// Latencies from 1 ms to 1 minute.
std::vector<double> latency_bounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  std::lock_guard lock(mutex_);
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard lock(mutex_);
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  long long cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, number(bounds_[i]), cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, number(sum_), name,
                     count_);
  return out;
}

Metrics::Metrics()
    : time_to_first_token(latency_bounds()), inter_token_latency(latency_bounds()), step_seconds(latency_bounds()) {}

void Metrics::count_request(const std::string& route, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{route, status}];
}

void Metrics::count_generated(long long tokens) {
  const long long s = now_second();
  std::lock_guard lock(mutex_);
  generated_ += tokens;
  recent_[s] += tokens;
  while (!recent_.empty() && recent_.begin()->first <= s - kRateWindow - 1) recent_.erase(recent_.begin());
}

double Metrics::tokens_per_second() const {
  // Whole seconds only: the current second is still filling.
  const long long s = now_second();
  long long sum = 0;
  for (const auto& [second, n] : recent_)
    if (second < s && second >= s - kRateWindow) sum += n;
  return static_cast<double>(sum) / kRateWindow;
}

std::string Metrics::render() const {
  std::string out;
  const auto counter = [&](const char* name, const char* help, long long v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, v);
  };
  const auto gauge = [&](const char* name, const char* help, double v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, number(v));
  };
  {
    std::lock_guard lock(mutex_);
    out += "# HELP mhla_requests_total HTTP requests by route and status.\n# TYPE mhla_requests_total counter\n";
    for (const auto& [key, n] : requests_)
      out += fmt::format("mhla_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
    counter("mhla_generated_tokens_total", "Tokens generated.", generated_);
    gauge("mhla_generated_tokens_per_second", "Tokens generated per second over the last 10 seconds.",
          tokens_per_second());
  }
  counter("mhla_prompt_tokens_total", "Prompt tokens prefilled (reused ones excluded).", prompt_tokens);
  counter("mhla_cached_prompt_tokens_total", "Prompt tokens reused from the prefix cache or a session's state.",
          cached_prompt_tokens);
  out += time_to_first_token.render("mhla_time_to_first_token_seconds", "From request arrival to the first token.");
  out += inter_token_latency.render("mhla_inter_token_latency_seconds", "Between consecutive tokens of a stream.");
  out += step_seconds.render("mhla_step_seconds", "Duration of one engine step (one batched forward pass).");
  gauge("mhla_active_sessions", "Sessions whose state is in memory.", static_cast<double>(sessions_resident));
  gauge("mhla_sessions_on_disk", "Sessions checkpointed to disk, restored on next use.",
        static_cast<double>(sessions_on_disk));
  gauge("mhla_active_streams", "Continuations being generated now.", static_cast<double>(active_streams));
  gauge("mhla_queued_requests", "Requests waiting for state memory or a busy session.",
        static_cast<double>(queued_requests));
  gauge("mhla_state_memory_bytes", "State memory in use (sessions, turns, running requests).",
        static_cast<double>(state_memory_bytes));
  gauge("mhla_state_memory_budget_bytes", "The state memory budget (--state-memory).",
        static_cast<double>(state_memory_budget));
  counter("mhla_session_evictions_total", "Idle sessions checkpointed to disk and evicted from memory.",
          session_evictions);
  counter("mhla_session_restores_total", "Evicted sessions read back into memory.", session_restores);
  counter("mhla_prefix_cache_hits_total", "Prompts that started from a cached prefix state.", prefix_hits);
  counter("mhla_prefix_cache_misses_total", "Prompts long enough to reuse a prefix that found none.", prefix_misses);
  counter("mhla_prefix_cache_evictions_total", "Prefix states dropped to stay within --prefix-cache-memory.",
          prefix_evictions);
  gauge("mhla_prefix_cache_bytes", "Bytes held by the prefix cache.", static_cast<double>(prefix_cache_bytes));
  gauge("mhla_prefix_cache_entries", "Prefix states held.", static_cast<double>(prefix_cache_entries));
  counter("mhla_cancelled_total", "Requests cancelled (client gone, session deleted, shutdown).", cancelled);
  out += fmt::format("# HELP mhla_device_info Where the model runs (label device: cpu or cuda) and its number "
                     "format.\n# TYPE mhla_device_info gauge\nmhla_device_info{{device=\"{}\",precision=\"{}\"}} 1\n",
                     device, precision);
  gauge("mhla_device_state_slots", "State slots of each context policy's model on the GPU (0 on the CPU).",
        static_cast<double>(device_slots));
  gauge("mhla_device_state_slots_in_use", "GPU state slots held by sessions and requests, or promised to them.",
        static_cast<double>(device_slots_in_use));
  return out;
}

}  // namespace mhla::serve
