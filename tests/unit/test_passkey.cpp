// Pass-key documents and `mhla passkey` with the bundled model (short documents only).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "mhla/error.hpp"
#include "mhla/eval_passkey.hpp"
#include "mhla/tokenizer.hpp"
#include "support/cli.hpp"

using namespace mhla;
using test::run_cli;
using test::TempDir;

namespace {
const std::string kModel = std::string(MHLA_TEST_DATA_DIR) + "/../../models/mhla-demo";
}

TEST_CASE("the pass-key text is the training format", "[passkey]") {
  const std::string text = eval::passkey_text("12345", 1, 2);
  const std::string filler =
      "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
  CHECK(text ==
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you "
        "about the important information there.\n" +
            filler + "\nThe pass key is 12345. Remember it. 12345 is the pass key.\n" + filler + " " + filler +
            "\nWhat is the pass key? The pass key is");
}

TEST_CASE("pass-key documents fill their length, leave room for the answer and place the key", "[passkey]") {
  const auto tok = Tokenizer::load(kModel + "/tokenizer.model");
  for (const long long length : {300LL, 1024LL, 2048LL}) {
    const auto doc = eval::make_passkey_document(tok, tok.bos_id(), length, "54321", 0.25);
    INFO(length);
    const auto n = static_cast<long long>(doc.prompt.size());
    CHECK(n <= length - eval::kPasskeyAnswerTokens);
    CHECK(n > length - eval::kPasskeyAnswerTokens - 40);  // within one filler unit (35 tokens) and a little
    CHECK(doc.prompt.front() == tok.bos_id());
    const std::string text = tok.decode(doc.prompt);
    const size_t key = text.find("The pass key is 54321.");
    REQUIRE(key != std::string::npos);
    if (length >= 1024)  // a quarter of the filler comes first
      CHECK(static_cast<double>(key) / static_cast<double>(text.size()) == Approx(0.25).margin(0.05));
  }
  CHECK_THROWS_WITH(eval::make_passkey_document(tok, tok.bos_id(), 60, "1", 0.5), Catch::Contains("too short"));
}

TEST_CASE("pass-key draws are fixed by the seed and lie in range", "[passkey]") {
  const auto a = eval::passkey_draw(1234, 1024, 0);
  CHECK(a == eval::passkey_draw(1234, 1024, 0));
  CHECK(a != eval::passkey_draw(1234, 1024, 1));
  CHECK(a != eval::passkey_draw(1234, 2048, 0));
  for (int t = 0; t < 50; ++t) {
    const auto [key, depth] = eval::passkey_draw(7, 4096, t);
    CHECK(key.size() == 5);
    CHECK(std::stoi(key) >= 10000);
    CHECK(depth >= 0.0);
    CHECK(depth < 1.0);
  }
}

TEST_CASE("mhla passkey reports accuracy per length and policy, refusing strict past the window", "[passkey][cli]") {
  TempDir dir;
  const auto r = run_cli(dir, "passkey --model '" + kModel +
                                  "' --lengths 512,4K --policy strict,slide_mean "
                                  "--trials 2 --output '" +
                                  dir.file("pk.json") + "'");
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("| length | strict | slide_mean | prefill tok/s |") != std::string::npos);
  CHECK(r.out.find("| 4K | refused |") != std::string::npos);
  const auto j = nlohmann::json::parse(test::slurp(dir.file("pk.json")));
  REQUIRE(j["cells"].size() == 4);
  CHECK(j["cells"][0]["length"] == 512);
  CHECK(j["cells"][0]["policy"] == "strict");
  CHECK(j["cells"][0]["trials"] == 2);
  CHECK(j["cells"][2]["refused"] == true);
  CHECK(j["cells"][3]["refused"] == false);
  // Inside the trained window slide_mean is strict: the same answers.
  CHECK(j["runs"][0]["answer"] == j["runs"][1]["answer"]);
  // The bundled model was trained on this task: short documents are well inside what it does.
  CHECK(j["cells"][0]["correct"].get<int>() >= 1);
}

TEST_CASE("mhla passkey refuses bad lengths and policies with one error line", "[passkey][cli]") {
  TempDir dir;
  for (const std::string& args : {std::string("passkey --lengths 4X"), std::string("passkey --lengths ,1K"),
                                  std::string("passkey --policy sliding"), std::string("passkey --trials 0")}) {
    INFO(args);
    const auto r = run_cli(dir, args + " --model '" + kModel + "'");
    CHECK(r.status == 1);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
}
