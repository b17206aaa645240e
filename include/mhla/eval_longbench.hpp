#pragma once
// Long-document question answering the LongBench way: LongBench-format samples, its per-data-set
// prompt templates and generation lengths, middle truncation, greedy generation with chunked
// prefill, and its metrics (eval_metrics.hpp).
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/model.hpp"
#include "mhla/tokenizer.hpp"

namespace mhla::eval {

// One line of a LongBench JSONL file.
struct LongBenchSample {
  std::string id;  // "_id"
  std::string dataset;
  std::string language;
  std::string input;
  std::string context;
  std::vector<std::string> answers;
  std::vector<std::string> all_classes;  // empty when null
  long long length = 0;                  // LongBench's length of the context (words or characters)
};

// Reads a JSONL file; throws mhla::Error naming the file, line and field of the first problem.
std::vector<LongBenchSample> read_longbench(const std::string& path);

// Prompt templates ({context} and {input} filled from a sample) and the most tokens to generate,
// per data set.
struct LongBenchConfig {
  std::map<std::string, std::string, std::less<>> prompts;
  std::map<std::string, int, std::less<>> max_gen;

  // LongBench's own configuration (its config/dataset2prompt.json and dataset2maxlen.json).
  static LongBenchConfig defaults();
  // The defaults with either part replaced by a JSON file of the same layout (empty: keep).
  static LongBenchConfig load(const std::string& prompts_path, const std::string& max_gen_path);

  // Throw mhla::Error naming the data set and the sets that are configured.
  const std::string& prompt(std::string_view dataset) const;
  int generation_length(std::string_view dataset) const;
};

// The template with every {context} and {input} replaced.
std::string build_prompt(std::string_view prompt_template, const LongBenchSample& sample);

// LongBench's middle truncation: at most max_length tokens, the first max_length/2 and the last
// max_length/2 when it must cut.
std::vector<int> middle_truncate(std::span<const int> tokens, long long max_length);

struct LongBenchOptions {
  // Prompts longer than this many tokens (BOS included) are cut in the middle. nullopt: under
  // strict, the trained window less the data set's generation length; under a slide policy,
  // whole prompts.
  std::optional<long long> max_length;
  ContextPolicy policy = ContextPolicy::strict;
  long long prefill_chunk = 256;
  // Samples with the same data set and context are prefilled once up to the prompt tokens they
  // all share; each question then continues a copy (fork) of that state.
  bool reuse_documents = false;
};

struct LongBenchPrediction {
  size_t sample = 0;  // index into the samples
  std::string prediction;
  double score = 0;             // in [0, 1]
  long long prompt_tokens = 0;  // after truncation, BOS included
  bool truncated = false;
  long long shared_tokens = 0;   // of the prompt, prefilled once for its document (reuse)
  long long prefill_tokens = 0;  // prefilled for this sample alone
  double prefill_seconds = 0;
  long long decode_tokens = 0;
  double decode_seconds = 0;
  double seconds = 0;  // wall time of this sample, its share of a shared prefill included
  std::string finish;  // "stop" or "length"
};

// Runs every sample (greedy decoding), calling on_prediction after each; checks first that
// every sample's data set has a prompt, a generation length and a metric, and that under the
// strict policy a prompt plus its generation fits the trained window.
std::vector<LongBenchPrediction> run_longbench(
    const Model& model, const Tokenizer& tokenizer, std::span<const LongBenchSample> samples,
    const LongBenchConfig& config, const LongBenchOptions& options,
    const std::function<void(const LongBenchPrediction&)>& on_prediction = {});

struct LongBenchDatasetSummary {
  std::string dataset;
  std::string metric;
  int samples = 0;
  int truncated = 0;
  double score = 0;  // 100 x the mean sample score
  // LongBench-E's buckets by the samples' length field: 0-4K, 4-8K, 8K+ (nullopt when empty).
  std::optional<double> bucket_scores[3];
  long long prefill_tokens = 0;
  double prefill_seconds = 0;
  long long decode_tokens = 0;
  double decode_seconds = 0;
  double seconds = 0;
};

// Per data set, in the order they first appear.
std::vector<LongBenchDatasetSummary> summarize(std::span<const LongBenchSample> samples,
                                               std::span<const LongBenchPrediction> predictions);

}  // namespace mhla::eval
