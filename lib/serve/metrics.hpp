#pragma once
// Counters, gauges and histograms for GET /metrics (Prometheus text format 0.0.4). Written
// from the engine and connection threads, read by the scrape.
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace mhla::serve {

class Histogram {
public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // The # HELP/# TYPE header and the _bucket, _sum and _count lines.
  std::string render(const std::string& name, const std::string& help) const;

private:
  std::vector<double> bounds_;
  mutable std::mutex mutex_;
  std::vector<long long> counts_;  // one per bound, plus +Inf
  double sum_ = 0;
  long long count_ = 0;
};

class Metrics {
public:
  Metrics();

  void count_request(const std::string& route, int status);
  // Generated tokens, for the counter and the tokens/s gauge (a 10-second window).
  void count_generated(long long tokens);

  Histogram time_to_first_token;
  Histogram inter_token_latency;
  Histogram step_seconds;

  std::atomic<long long> prompt_tokens{0};        // prefilled (cached tokens excluded)
  std::atomic<long long> cached_prompt_tokens{0}; // taken from the prefix cache or a session
  std::atomic<long long> session_evictions{0};    // sessions written to disk to free memory
  std::atomic<long long> session_restores{0};     // sessions read back from disk on use
  std::atomic<long long> prefix_hits{0};
  std::atomic<long long> prefix_misses{0};
  std::atomic<long long> prefix_evictions{0};
  std::atomic<long long> cancelled{0};            // requests that ended cancelled

  std::atomic<long long> sessions_resident{0};
  std::atomic<long long> sessions_on_disk{0};
  std::atomic<long long> active_streams{0};       // choices generating now
  std::atomic<long long> queued_requests{0};      // waiting for memory or a busy session
  std::atomic<long long> state_memory_bytes{0};
  std::atomic<long long> state_memory_budget{0};
  std::atomic<long long> prefix_cache_bytes{0};
  std::atomic<long long> prefix_cache_entries{0};

  // Where the model runs; set before the server starts.
  std::string device = "cpu";
  std::string precision = "f32";
  long long device_slots = 0;                     // state slots per context policy on the GPU
  std::atomic<long long> device_slots_in_use{0};  // held or promised, all policies

  std::string render() const;

private:
  double tokens_per_second() const;

  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, long long> requests_;
  long long generated_ = 0;
  // Generated tokens per whole second (steady clock), the last few seconds.
  std::map<long long, long long> recent_;
};

}  // namespace mhla::serve
