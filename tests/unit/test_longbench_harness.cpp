// The LongBench harness: samples, prompts, truncation, configuration, and `mhla longbench` end to
// end on the small synthetic files in tests/data/longbench with the bundled model.
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>

#include "mhla/error.hpp"
#include "mhla/eval_longbench.hpp"
#include "support/cli.hpp"

using namespace mhla;
using test::run_cli;
using test::TempDir;

namespace {
const std::string kData = std::string(MHLA_TEST_DATA_DIR) + "/longbench/";
const std::string kModel = std::string(MHLA_TEST_DATA_DIR) + "/../../models/mhla-demo";

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}
}  // namespace

TEST_CASE("build_prompt fills every context and input and keeps other braces", "[longbench]") {
  const eval::LongBenchSample s{.id = "",
                                .dataset = "",
                                .language = "",
                                .input = "Q?",
                                .context = "CTX",
                                .answers = {},
                                .all_classes = {},
                                .length = 0};
  CHECK(eval::build_prompt("Read {context}. {input} {context} {x}", s) == "Read CTX. Q? CTX {x}");
  CHECK(eval::build_prompt("no fields", s) == "no fields");
}

TEST_CASE("middle truncation keeps the first and the last half", "[longbench]") {
  const std::vector<int> t = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  CHECK(eval::middle_truncate(t, 4) == std::vector<int>{1, 2, 9, 10});
  CHECK(eval::middle_truncate(t, 5) == std::vector<int>{1, 2, 9, 10});  // max/2 rounds down on each side
  CHECK(eval::middle_truncate(t, 10) == t);
  CHECK(eval::middle_truncate(t, 100) == t);
  CHECK_THROWS_AS(eval::middle_truncate(t, 1), Error);
}

TEST_CASE("LongBench's configuration is built in and can be replaced", "[longbench]") {
  const auto c = eval::LongBenchConfig::defaults();
  CHECK(c.generation_length("multifieldqa_en") == 64);
  CHECK(c.generation_length("gov_report") == 512);
  CHECK(c.prompt("hotpotqa").find("{context}") != std::string::npos);
  // LongBench's data name passage_retrieval_en and LongBench-E's suffix find the configured sets.
  CHECK(&c.prompt("passage_retrieval_en") == &c.prompt("passage_retrieval"));
  CHECK(c.generation_length("hotpotqa_e") == 32);
  CHECK_THROWS_WITH(c.prompt("nonesuch"), Catch::Contains("no prompt template for data set 'nonesuch'"));
  const auto custom = eval::LongBenchConfig::load(kData + "passkey_prompts.json", kData + "passkey_max_gen.json");
  CHECK(custom.prompt("passage_count") == "{context}\n{input}");
  CHECK(custom.generation_length("passage_count") == 8);
  CHECK_THROWS_AS(custom.prompt("hotpotqa"), Error);  // a prompts file replaces the whole set
  CHECK_THROWS_WITH(eval::LongBenchConfig::load(kData + "synthetic.jsonl", ""), Catch::Contains("not valid JSON"));
}

TEST_CASE("LongBench files are read with their fields, and bad lines are named", "[longbench]") {
  const auto samples = eval::read_longbench(kData + "synthetic.jsonl");
  REQUIRE(samples.size() == 7);
  CHECK(samples[0].dataset == "multifieldqa_en");
  CHECK(samples[0].id == "mf-1");
  CHECK(samples[0].all_classes.empty());
  CHECK(samples[1].answers == std::vector<std::string>{"range()", "range"});
  CHECK(samples[5].all_classes.size() == 6);
  CHECK(samples[0].length > 0);

  TempDir dir;
  const auto bad = dir.file("bad.jsonl");
  std::ofstream(bad) << R"({"input": "q", "context": "c", "answers": ["a"], "dataset": "trec"})"
                     << "\n"
                     << R"({"input": "q", "context": "c", "answers": "a", "dataset": "trec"})"
                     << "\n";
  CHECK_THROWS_WITH(eval::read_longbench(bad), Catch::Contains("bad.jsonl:2: field 'answers' is not a list"));
  std::ofstream(bad) << "{not json\n";
  CHECK_THROWS_WITH(eval::read_longbench(bad), Catch::Contains("bad.jsonl:1: not a JSON object"));
  CHECK_THROWS_WITH(eval::read_longbench(dir.file("missing.jsonl")), Catch::Contains("cannot read"));
}

TEST_CASE("mhla longbench scores pass keys in LongBench's format with the bundled model", "[longbench][cli]") {
  TempDir dir;
  const auto r = run_cli(dir, "longbench --model '" + kModel + "' --data '" + kData + "passkey.jsonl' --prompts '" +
                                  kData + "passkey_prompts.json' --max-gen '" + kData +
                                  "passkey_max_gen.json' --output '" + dir.file("out") + "'");
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto predictions = read_jsonl(dir.file("out/predictions.jsonl"));
  REQUIRE(predictions.size() == 2);
  for (const auto& p : predictions) {
    CHECK(p["dataset"] == "passage_count");
    CHECK(p["decode_tokens"].get<int>() <= 8);
    CHECK(p["truncated"] == false);
  }
  // The model finds both keys (greedy decoding is deterministic).
  const auto summary = nlohmann::json::parse(test::slurp(dir.file("out/summary.json")));
  REQUIRE(summary.size() == 1);
  CHECK(summary[0]["score"].get<double>() == Approx(100.0));
  CHECK(r.out.find("| passage_count | count | 2 | 100.00 |") != std::string::npos);
}

TEST_CASE("mhla longbench runs the synthetic English sets, truncates, and reuses documents", "[longbench][cli]") {
  TempDir dir;
  const std::string base = "longbench --model '" + kModel + "' --data '" + kData + "synthetic.jsonl' --max-gen '" +
                           kData + "short_max_gen.json' ";
  const auto plain = run_cli(dir, base + "--output '" + dir.file("plain") + "'");
  INFO(plain.err);
  REQUIRE(plain.status == 0);
  const auto a = read_jsonl(dir.file("plain/predictions.jsonl"));
  REQUIRE(a.size() == 7);
  double sum = 0;
  for (const auto& p : a) {
    CHECK(p["score"].get<double>() >= 0.0);
    CHECK(p["score"].get<double>() <= 1.0);
    CHECK(p["shared_tokens"] == 0);
    if (p["dataset"] == "multifieldqa_en") sum += p["score"].get<double>();
  }
  const auto summary = nlohmann::json::parse(test::slurp(dir.file("plain/summary.json")));
  REQUIRE(summary.size() == 5);
  CHECK(summary[0]["dataset"] == "multifieldqa_en");
  CHECK(summary[0]["samples"] == 3);
  CHECK(summary[0]["score"].get<double>() == Approx(100.0 * sum / 3));
  CHECK(test::slurp(dir.file("plain/summary.md")).find("| lcc | code_sim | 1 |") != std::string::npos);

  // The three questions about one document share its prefill; greedy answers stay the same.
  const auto reuse = run_cli(dir, base + "--reuse --output '" + dir.file("reuse") + "'");
  REQUIRE(reuse.status == 0);
  const auto b = read_jsonl(dir.file("reuse/predictions.jsonl"));
  REQUIRE(b.size() == a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i]["pred"] == b[i]["pred"]);
    CHECK(a[i]["prompt_tokens"] == b[i]["prompt_tokens"]);
  }
  CHECK(b[0]["shared_tokens"].get<int>() > 100);
  CHECK(b[0]["shared_tokens"] == b[2]["shared_tokens"]);
  CHECK(b[1]["prefill_tokens"].get<int>() < b[0]["prefill_tokens"].get<int>());

  // A small maximum length cuts every prompt in the middle.
  const auto cut = run_cli(dir, base + "--max-length 64 --output '" + dir.file("cut") + "'");
  REQUIRE(cut.status == 0);
  for (const auto& p : read_jsonl(dir.file("cut/predictions.jsonl"))) {
    CHECK(p["truncated"] == true);
    CHECK(p["prompt_tokens"].get<int>() <= 64);
  }
}

TEST_CASE("mhla longbench refuses what it cannot run, with one error line", "[longbench][cli]") {
  TempDir dir;
  // A document longer than the trained window of 2048 tokens.
  nlohmann::json sample = {{"input", "q"}, {"answers", {"a"}}, {"dataset", "hotpotqa"}, {"_id", "long"}};
  std::string context;
  for (int i = 0; i < 3000; ++i) context += "word ";
  sample["context"] = context;
  std::ofstream(dir.file("long.jsonl")) << sample.dump() << "\n";
  const std::string model = "longbench --model '" + kModel + "' ";
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {model + "--data '" + dir.file("long.jsonl") + "' --max-length 4000", "exceeds the trained window"},
           {model + "--data '" + kData + "synthetic.jsonl' --prompts '" + kData + "passkey_prompts.json'",
            "no prompt template for data set 'multifieldqa_en'"},
           {model + "--data '" + dir.file("none.jsonl") + "'", "cannot read"},
           {model, "--data is required"},
       }) {
    INFO(args);
    const auto r = run_cli(dir, args + " --output '" + dir.file("out") + "'");
    CHECK(r.status == 1);
    CHECK(r.err.find(message) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
}
