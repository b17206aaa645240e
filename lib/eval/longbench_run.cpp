// Running LongBench samples through a model: prompts, truncation, greedy generation, scores,
// and the optional reuse of a document's prefilled state across its questions.
#include <algorithm>
#include <array>
#include <chrono>
#include <fmt/format.h>

#include "mhla/error.hpp"
#include "mhla/eval_longbench.hpp"
#include "mhla/eval_metrics.hpp"
#include "mhla/session.hpp"

namespace mhla::eval {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Job {
  std::vector<int> tokens;  // BOS first
  bool truncated = false;
  int max_gen = 0;
};

Job prepare(const Model& model, const Tokenizer& tokenizer, const LongBenchSample& s, size_t index,
            const LongBenchConfig& config, const LongBenchOptions& options) {
  if (!metric_for(s.dataset))
    throw Error(
        fmt::format("sample {} ({}): no metric for data set '{}'; the harness scores LongBench's English "
                    "sets, lsht and passage_retrieval_zh",
                    index + 1, s.id, s.dataset));
  Job job;
  job.max_gen = config.generation_length(s.dataset);
  auto ids = tokenizer.encode(build_prompt(config.prompt(s.dataset), s), false);
  const long long window = model.trained_window();
  std::optional<long long> limit = options.max_length;
  if (!limit && options.policy == ContextPolicy::strict) limit = window - job.max_gen;
  if (limit && static_cast<long long>(ids.size()) + 1 > *limit) {
    ids = middle_truncate(ids, *limit - 1);  // room for BOS
    job.truncated = true;
  }
  job.tokens.reserve(ids.size() + 1);
  job.tokens.push_back(model.config().bos_token_id);
  job.tokens.insert(job.tokens.end(), ids.begin(), ids.end());
  const auto need = static_cast<long long>(job.tokens.size()) + job.max_gen;
  if (options.policy == ContextPolicy::strict && need > window)
    throw Error(
        fmt::format("sample {} ({}, {}): a prompt of {} tokens plus {} generated exceeds the trained window "
                    "of {} tokens under the strict policy; give --max-length {} or less, or --policy "
                    "slide_mean",
                    index + 1, s.dataset, s.id, job.tokens.size(), job.max_gen, window, window - job.max_gen));
  return job;
}

// Samples grouped by document (data set and context) when reusing, in order of appearance.
std::vector<std::vector<size_t>> groups(std::span<const LongBenchSample> samples, bool reuse) {
  std::vector<std::vector<size_t>> out;
  std::map<std::pair<std::string_view, std::string_view>, size_t> where;
  for (size_t i = 0; i < samples.size(); ++i) {
    if (!reuse) {
      out.push_back({i});
      continue;
    }
    const auto key = std::make_pair(std::string_view(samples[i].dataset), std::string_view(samples[i].context));
    const auto [it, fresh] = where.emplace(key, out.size());
    if (fresh) out.emplace_back();
    out[it->second].push_back(i);
  }
  return out;
}

size_t shared_prefix(const std::vector<Job>& jobs, const std::vector<size_t>& group) {
  if (group.size() < 2) return 0;
  size_t n = jobs[group[0]].tokens.size();
  for (const size_t j : group) {
    const auto& a = jobs[group[0]].tokens;
    const auto& b = jobs[j].tokens;
    n = std::min(
        {n, b.size(), static_cast<size_t>(std::mismatch(a.begin(), a.end(), b.begin(), b.end()).first - a.begin())});
  }
  return n;
}

}  // namespace

std::vector<LongBenchPrediction> run_longbench(const Model& model, const Tokenizer& tokenizer,
                                               std::span<const LongBenchSample> samples, const LongBenchConfig& config,
                                               const LongBenchOptions& options,
                                               const std::function<void(const LongBenchPrediction&)>& on_prediction) {
  std::vector<Job> jobs;
  jobs.reserve(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) jobs.push_back(prepare(model, tokenizer, samples[i], i, config, options));

  SessionOptions session_options;
  session_options.policy = options.policy;
  session_options.prefill_chunk = options.prefill_chunk;
  session_options.sampling.temperature = 0;  // greedy, as LongBench decodes

  std::vector<LongBenchPrediction> out(samples.size());
  for (const auto& group : groups(samples, options.reuse_documents)) {
    const size_t shared = shared_prefix(jobs, group);
    Session document(model, &tokenizer, session_options);
    const auto t0 = std::chrono::steady_clock::now();
    document.append(std::span(jobs[group[0]].tokens).first(shared));
    const double shared_seconds = seconds_since(t0);
    bool first = true;
    for (const size_t i : group) {
      const auto t1 = std::chrono::steady_clock::now();
      Session session = document;  // a fork of the document's state
      const SessionStats before = session.stats();
      session.append(std::span(jobs[i].tokens).subspan(shared));
      StopCriteria stop;
      stop.max_tokens = jobs[i].max_gen;
      stop.eos_id = model.config().eos_token_id;
      const GenerateResult result = session.generate(stop);
      const SessionStats& after = session.stats();

      LongBenchPrediction& p = out[i];
      p.sample = i;
      p.prediction = result.text;
      p.score = score_sample(samples[i].dataset, p.prediction, samples[i].answers, samples[i].all_classes);
      p.prompt_tokens = static_cast<long long>(jobs[i].tokens.size());
      p.truncated = jobs[i].truncated;
      p.shared_tokens = static_cast<long long>(shared);
      // The document's prefill counts once, with the first of its questions.
      p.prefill_tokens = after.prefill_tokens - before.prefill_tokens + (first ? static_cast<long long>(shared) : 0);
      p.prefill_seconds = after.prefill_seconds - before.prefill_seconds + (first ? shared_seconds : 0);
      p.decode_tokens = after.decode_tokens - before.decode_tokens;
      p.decode_seconds = after.decode_seconds - before.decode_seconds;
      p.seconds = seconds_since(t1) + (first ? shared_seconds : 0);
      p.finish = std::string(to_string(result.reason));
      first = false;
      if (on_prediction) on_prediction(p);
    }
  }
  return out;
}

std::vector<LongBenchDatasetSummary> summarize(std::span<const LongBenchSample> samples,
                                               std::span<const LongBenchPrediction> predictions) {
  std::vector<LongBenchDatasetSummary> out;
  std::map<std::string, size_t, std::less<>> where;
  std::vector<std::array<std::pair<double, int>, 3>> buckets;
  for (const auto& p : predictions) {
    const LongBenchSample& s = samples[p.sample];
    const auto [it, fresh] = where.emplace(s.dataset, out.size());
    if (fresh) {
      out.emplace_back();
      out.back().dataset = s.dataset;
      out.back().metric = std::string(to_string(*metric_for(s.dataset)));
      buckets.emplace_back();
    }
    LongBenchDatasetSummary& d = out[it->second];
    ++d.samples;
    d.truncated += p.truncated ? 1 : 0;
    d.score += p.score;
    d.prefill_tokens += p.prefill_tokens;
    d.prefill_seconds += p.prefill_seconds;
    d.decode_tokens += p.decode_tokens;
    d.decode_seconds += p.decode_seconds;
    d.seconds += p.seconds;
    auto& b = buckets[it->second][s.length < 4000 ? 0 : s.length < 8000 ? 1 : 2];
    b.first += p.score;
    ++b.second;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].score = 100.0 * out[i].score / out[i].samples;
    for (int k = 0; k < 3; ++k)
      if (buckets[i][static_cast<size_t>(k)].second > 0)
        out[i].bucket_scores[k] =
            100.0 * buckets[i][static_cast<size_t>(k)].first / buckets[i][static_cast<size_t>(k)].second;
  }
  return out;
}

}  // namespace mhla::eval
