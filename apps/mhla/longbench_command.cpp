// mhla longbench: long-document question answering the LongBench way, writing per-sample
// predictions and a summary table (score per data set, prefill and decode speed).
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "mhla/error.hpp"
#include "mhla/eval_longbench.hpp"
#include "model_args.hpp"

namespace mhla::cli {

namespace {

struct LongBenchArgs {
  std::string model, data, policy = "strict", prompts, max_gen, output = "longbench-out";
  std::optional<long long> max_length;
  long long chunk = 256;
  bool reuse = false;
};

double rate(long long tokens, double seconds) { return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0; }

std::string cell(const std::optional<double>& score) { return score ? fmt::format("{:.2f}", *score) : "-"; }

std::string summary_table(const std::vector<eval::LongBenchDatasetSummary>& rows) {
  std::string out =
      "| data set | metric | samples | score | 0-4K | 4-8K | 8K+ | truncated | prefill tok/s | decode tok/s | s/sample "
      "|\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  double total = 0;
  for (const auto& r : rows) {
    out += fmt::format("| {} | {} | {} | {:.2f} | {} | {} | {} | {} | {:.0f} | {:.1f} | {:.2f} |\n", r.dataset,
                       r.metric, r.samples, r.score, cell(r.bucket_scores[0]), cell(r.bucket_scores[1]),
                       cell(r.bucket_scores[2]), r.truncated, rate(r.prefill_tokens, r.prefill_seconds),
                       rate(r.decode_tokens, r.decode_seconds), r.seconds / r.samples);
    total += r.score;
  }
  if (rows.size() > 1)
    out += fmt::format("| average | | | {:.2f} | | | | | | | |\n", total / static_cast<double>(rows.size()));
  return out;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw Error(fmt::format("cannot write {}", path.string()));
}

void run_longbench_command(const LongBenchArgs& a) {
  const LoadedModel m = load_model(a.model);
  if (!m.tokenizer)
    throw Error(fmt::format("longbench needs a tokenizer: {} has no tokenizer.model", m.model.directory()));
  const auto config = eval::LongBenchConfig::load(a.prompts, a.max_gen);
  const auto samples = eval::read_longbench(a.data);
  eval::LongBenchOptions options;
  options.max_length = a.max_length;
  options.policy = parse_policy(a.policy);
  options.prefill_chunk = a.chunk;
  options.reuse_documents = a.reuse;

  std::error_code ec;
  std::filesystem::create_directories(a.output, ec);
  if (ec) throw Error(fmt::format("cannot create the output directory {}: {}", a.output, ec.message()));
  const auto dir = std::filesystem::path(a.output);
  std::ofstream jsonl(dir / "predictions.jsonl", std::ios::binary);
  if (!jsonl) throw Error(fmt::format("cannot write {}", (dir / "predictions.jsonl").string()));

  size_t done = 0;
  const auto predictions = eval::run_longbench(m.model, *m.tokenizer, samples, config, options, [&](const auto& p) {
    const auto& s = samples[p.sample];
    nlohmann::json j = {{"_id", s.id},
                        {"dataset", s.dataset},
                        {"pred", p.prediction},
                        {"answers", s.answers},
                        {"all_classes", s.all_classes.empty() ? nlohmann::json() : nlohmann::json(s.all_classes)},
                        {"length", s.length},
                        {"score", p.score},
                        {"prompt_tokens", p.prompt_tokens},
                        {"truncated", p.truncated},
                        {"shared_tokens", p.shared_tokens},
                        {"prefill_tokens", p.prefill_tokens},
                        {"prefill_seconds", p.prefill_seconds},
                        {"decode_tokens", p.decode_tokens},
                        {"decode_seconds", p.decode_seconds},
                        {"seconds", p.seconds},
                        {"finish", p.finish}};
    jsonl << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    jsonl.flush();
    std::fprintf(stderr, "mhla: [%zu/%zu] %s %s: score %.3f, prompt %lld tokens%s, %.2f s\n", ++done, samples.size(),
                 s.dataset.c_str(), s.id.c_str(), p.score, p.prompt_tokens, p.truncated ? " (truncated)" : "",
                 p.seconds);
  });
  if (!jsonl) throw Error(fmt::format("cannot write {}", (dir / "predictions.jsonl").string()));

  const auto rows = eval::summarize(samples, predictions);
  const std::string length_rule =
      a.max_length ? fmt::format("prompts cut in the middle to {} tokens", *a.max_length)
      : options.policy == ContextPolicy::strict
          ? fmt::format(
                "prompts cut in the middle to the trained window ({} tokens) less each data set's "
                "generation length",
                m.model.trained_window())
          : std::string("whole prompts");
  const std::string header =
      fmt::format("model {}, data {}, policy {}, {}, prefill chunk {}{}\n\n", m.model.directory(), a.data, a.policy,
                  length_rule, a.chunk, a.reuse ? ", documents prefilled once and forked per question" : "");
  const std::string table = summary_table(rows);
  write_file(dir / "summary.md", header + table);
  nlohmann::json summary = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json buckets = nlohmann::json::array();
    for (const auto& b : r.bucket_scores) buckets.push_back(b ? nlohmann::json(*b) : nlohmann::json());
    summary.push_back({{"dataset", r.dataset},
                       {"metric", r.metric},
                       {"samples", r.samples},
                       {"score", r.score},
                       {"score_by_length", buckets},
                       {"truncated", r.truncated},
                       {"prefill_tokens", r.prefill_tokens},
                       {"prefill_seconds", r.prefill_seconds},
                       {"decode_tokens", r.decode_tokens},
                       {"decode_seconds", r.decode_seconds},
                       {"seconds", r.seconds}});
  }
  write_file(dir / "summary.json", summary.dump(1) + "\n");
  std::fputs((header + table).c_str(), stdout);
  std::fprintf(stderr, "mhla: wrote %s, summary.md and summary.json in %s\n", "predictions.jsonl", a.output.c_str());
}

}  // namespace

void add_longbench_command(CLI::App& app) {
  auto args = std::make_shared<LongBenchArgs>();
  CLI::App* cmd = app.add_subcommand("longbench", "Long-document question answering scored the LongBench way");
  add_model_option(cmd, args->model);
  cmd->add_option("--data", args->data, "LongBench-format JSONL file (input, context, answers, dataset, ...)")
      ->required();
  cmd->add_option("--max-length", args->max_length,
                  "Cut prompts longer than N tokens in the middle (default: under strict, the trained window less "
                  "the data set's generation length; under a slide policy, whole prompts)")
      ->check(CLI::Range(3LL, 1LL << 40));
  cmd->add_option("--policy", args->policy, "Past the trained window: strict, slide or slide_mean")
      ->capture_default_str()
      ->check(CLI::IsMember({"strict", "slide", "slide_mean"}));
  cmd->add_option("--chunk", args->chunk, "Prefill chunk length")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--prompts", args->prompts, "JSON file of prompt templates per data set (default: LongBench's)");
  cmd->add_option("--max-gen", args->max_gen, "JSON file of generation lengths per data set (default: LongBench's)");
  cmd->add_option("--output", args->output, "Directory for predictions.jsonl, summary.md and summary.json")
      ->capture_default_str();
  cmd->add_flag("--reuse", args->reuse, "Prefill each document once and fork its state for every question about it");
  cmd->callback([args] { run_longbench_command(*args); });
}

}  // namespace mhla::cli
