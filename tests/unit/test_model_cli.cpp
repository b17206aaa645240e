// The model commands as a user runs them: generate, logits, perplexity, inspect, chat.
#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

#include "mhla/device.hpp"
#include "mhla/safetensors.hpp"
#include "support/cli.hpp"
#include "support/reference.hpp"

using namespace mhla;
using test::run_cli;
using test::TempDir;

namespace {
const std::string kTiny = std::string(MHLA_TEST_DATA_DIR) + "/models/tiny";
const std::string kGqa = std::string(MHLA_TEST_DATA_DIR) + "/models/tiny-gqa";

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }
}  // namespace

TEST_CASE("mhla generate: seeded runs repeat, ids go alone to stdout, timing to stderr", "[model-cli]") {
  TempDir dir;
  const std::string args = "generate --model '" + kGqa + "' --prompt-ids 1,5,9 --max-tokens 12 --seed 4 --print-ids";
  const auto a = run_cli(dir, args), b = run_cli(dir, args);
  REQUIRE(a.status == 0);
  CHECK(a.out == b.out);
  std::istringstream ids(a.out);
  int id = 0, count = 0;
  while (ids >> id) ++count;
  CHECK(count == 12);
  CHECK(a.err.find("prefill 3 tokens") != std::string::npos);
  CHECK(a.err.find("decode 12 tokens") != std::string::npos);
  CHECK(a.err.find("state ") != std::string::npos);
  const auto greedy = run_cli(dir, "generate --model '" + kGqa + "' --prompt-ids 1,5,9 --max-tokens 12 --temperature 0 --print-ids");
  const auto greedy2 = run_cli(dir, "generate --model '" + kGqa + "' --prompt-ids 1,5,9 --max-tokens 12 --temperature 0 --print-ids --seed 99");
  CHECK(greedy.out == greedy2.out);
}

TEST_CASE("mhla generate streams text with the model's tokenizer", "[model-cli]") {
  TempDir dir;
  const auto r = run_cli(dir, "generate --model '" + kTiny + "' --prompt 'The license' --max-tokens 10 --seed 1");
  REQUIRE(r.status == 0);
  CHECK(!r.out.empty());
  CHECK(r.err.find("prefill ") != std::string::npos);
}

TEST_CASE("mhla generate refuses what it cannot do, with one error line", "[model-cli]") {
  TempDir dir;
  for (const std::string& args : std::vector<std::string>{
           "generate --model '" + kGqa + "' --prompt 'hello'",                        // no tokenizer
           "generate --model '" + kGqa + "'",                                         // no prompt
           "generate --model '" + kGqa + "' --prompt x --prompt-ids 1",               // both
           "generate --model '" + kGqa + "' --prompt-ids 1,x,3",                      // bad id
           "generate --model '" + kGqa + "' --prompt-ids 1,500",                      // outside vocabulary
           "generate --model '" + kGqa + "' --prompt-ids 1 --temperature -1",         // bad sampling value
           "generate --model '" + kGqa + "' --prompt-ids 1 --bogus",                  // unknown flag
           std::string("generate --model /nonexistent --prompt-ids 1"),               // no model
       }) {
    INFO(args);
    const auto r = run_cli(dir, args);
    CHECK(r.status == 1);
    CHECK(r.err.rfind("mhla: error: ", 0) == 0);
    CHECK(lines(r.err) == 1);
  }
}

TEST_CASE("mhla generate stops at the trained window under strict and goes on under slide_mean", "[model-cli]") {
  TempDir dir;
  std::string ids = "1";
  for (int i = 0; i < 29; ++i) ids += ",7";
  const auto strict = run_cli(dir, "generate --model '" + kGqa + "' --prompt-ids " + ids + " --max-tokens 10 --print-ids --seed 1");
  REQUIRE(strict.status == 0);
  CHECK(strict.err.find("finish: length") != std::string::npos);
  CHECK(strict.err.find("position 32") != std::string::npos);
  const auto slide = run_cli(dir, "generate --model '" + kGqa + "' --prompt-ids " + ids +
                                      " --max-tokens 10 --print-ids --seed 1 --policy slide_mean --ignore-eos");
  CHECK(slide.err.find("position 40") != std::string::npos);
}

TEST_CASE("mhla logits writes every position's logits in both modes", "[model-cli]") {
  TempDir dir;
  const auto golden = SafetensorsFile::open(kGqa + "/golden.safetensors");
  std::string ids;
  for (float x : golden.read_f32("ids")) {
    if (!ids.empty()) ids += ',';
    ids += std::to_string(static_cast<int>(x));
  }
  const auto ref = golden.read_f32("logits");
  for (const std::string mode : {"prefill", "decode"}) {
    const auto r = run_cli(dir, "logits --model '" + kGqa + "' --ids " + ids + " --output '" + dir.file("l.safetensors") +
                                    "' --mode " + mode + " --chunk 5");
    REQUIRE(r.status == 0);
    const auto out = SafetensorsFile::open(dir.file("l.safetensors"));
    CHECK(out.tensor("logits").shape == std::vector<int64_t>{20, 97});
    CHECK(test::relative_error(out.read_f32("logits"), ref) <= 1e-4);
  }
}

TEST_CASE("mhla inspect and perplexity describe and score", "[model-cli]") {
  TempDir dir;
  const auto r = run_cli(dir, "inspect --model '" + kTiny + "'");
  REQUIRE(r.status == 0);
  CHECK(r.out.find("trained window:   32 tokens") != std::string::npos);
  CHECK(r.out.find("L = 4 blocks of C = 8") != std::string::npos);
  CHECK(r.out.find("tokenizer.model, 97 pieces") != std::string::npos);
  std::ofstream(dir.file("text.txt")) << "The license grants the right to copy and modify the work. " << std::string(3, 'x');
  const auto p = run_cli(dir, "perplexity --model '" + kTiny + "' --text '" + dir.file("text.txt") + "' --context 16");
  REQUIRE(p.status == 0);
  CHECK(p.out.find("perplexity: ") == 0);
}

TEST_CASE("mhla chat keeps the session: later turns prefill only the new text", "[model-cli]") {
  TempDir dir;
  std::ofstream(dir.file("in.txt")) << "hi\nand more\n";
  const auto r = run_cli(dir, "chat --model '" + kTiny + "' --max-tokens 4 --seed 2 --policy slide_mean <'" +
                                  dir.file("in.txt") + "'");
  REQUIRE(r.status == 0);
  // Turn 2 prefills only "\nUser: and more\nAssistant:", far fewer tokens than the history.
  const auto first = r.err.find("prefill "), second = r.err.find("prefill ", first + 1);
  REQUIRE(second != std::string::npos);
  const int n1 = std::stoi(r.err.substr(first + 8)), n2 = std::stoi(r.err.substr(second + 8));
  const auto pos = r.err.rfind("position ");
  const int position = std::stoi(r.err.substr(pos + 9));
  CHECK(n1 > 0);
  CHECK(n2 > 0);
  CHECK(n2 < position - n1);
  CHECK(lines(r.out) >= 2);
}

TEST_CASE("the model commands take --device: cpu runs, cuda needs a GPU, bad names are refused", "[model-cli]") {
  TempDir dir;
  const std::string ids = " --model '" + kGqa + "' --prompt-ids 1,5,9 --max-tokens 4 --temperature 0 --print-ids";
  const auto plain = run_cli(dir, "generate" + ids);
  const auto cpu = run_cli(dir, "generate" + ids + " --device cpu");
  REQUIRE(cpu.status == 0);
  if (!mhla::cuda_available()) CHECK(cpu.out == plain.out);  // auto means the CPU without a GPU
  for (const std::string& cmd : {"generate" + ids, "logits --model '" + kGqa + "' --ids 1,2 --output " + dir.file("l")}) {
    INFO(cmd);
    const auto bad = run_cli(dir, cmd + " --device tpu");
    CHECK(bad.status == 1);
    CHECK(bad.err.find("--device") != std::string::npos);
    const auto bad_precision = run_cli(dir, cmd + " --precision fp16");
    CHECK(bad_precision.status == 1);
    CHECK(bad_precision.err.find("--precision") != std::string::npos);
    for (const std::string precision : {"f32", "f16"}) {
      INFO(precision);
      const auto cuda = run_cli(dir, cmd + " --device cuda --precision " + precision);
      if (mhla::cuda_available()) {
        CHECK(cuda.status == 0);
      } else {
        CHECK(cuda.status == 1);
        CHECK(cuda.err.rfind("mhla: error: ", 0) == 0);
        CHECK((cuda.err.find("no CUDA GPU") != std::string::npos || cuda.err.find("no CUDA backend") != std::string::npos));
        CHECK(lines(cuda.err) == 1);
      }
    }
  }
}
