// The command line in separate processes: `mhla generate --save-state` then `--resume` gives
// the token ids of one uninterrupted run, greedy and sampled; sampling flags on resume;
// `mhla state inspect`; every damaged or foreign file ends with status 1 and a message.
#include <catch2/catch.hpp>

#include "test_checkpoint_helpers.hpp"

using namespace mhla;
using namespace mhla::test;

namespace {

const std::string kTiny = kDataDir + "/models/tiny";

std::string generate_args(const std::string& extra) {
  return "generate --model " + quoted(kTiny) + " --ignore-eos --print-ids --chunk 3 " + extra;
}

// The ids printed by one run; fails the test on a non-zero status.
std::string ids_of(const ScratchDir& dir, const std::string& args) {
  const CliRun r = run_cli(dir, args);
  INFO(args << "\nstderr: " << r.err);
  REQUIRE(r.status == 0);
  return r.out.substr(0, r.out.find('\n'));
}

void check_refused(const CliRun& r, const std::string& expect) {
  INFO("stderr: " << r.err);
  CHECK(r.status == 1);
  CHECK(r.err.rfind("mhla: error: ", 0) == 0);
  CHECK_THAT(r.err, Catch::Contains(expect));
}

}  // namespace

TEST_CASE("generate --save-state then --resume in a new process equals one run", "[checkpoint][cli]") {
  const ScratchDir dir;
  const std::string state = quoted(dir.file("s.mhlastate"));
  struct Case {
    const char* name;
    const char* flags;
    int before, after;
  };
  const Case cases[] = {
      {"greedy, inside a block", "--temperature 0 --repeat-penalty 1.3", 6, 21},
      {"greedy, on a block boundary", "--temperature 0 --repeat-penalty 1.3", 11, 16},
      {"sampled, inside a block", "--temperature 1.5 --top-k 0 --seed 9", 6, 21},
      {"sampled, on a block boundary", "--temperature 1.5 --top-k 0 --seed 9", 11, 16},
      {"greedy past the window, slide_mean", "--temperature 0 --repeat-penalty 1.3 --policy slide_mean", 40, 12},
      {"sampled past the window, slide", "--temperature 1.5 --top-k 0 --seed 9 --policy slide", 40, 12},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string prompt = std::string(" --prompt-ids 1,5,9,3,7 ") + c.flags;
    const std::string whole = ids_of(dir, generate_args(fmt::format("--max-tokens {}", c.before + c.after) + prompt));
    const std::string first =
        ids_of(dir, generate_args(fmt::format("--max-tokens {} --save-state {}", c.before, state) + prompt));
    const std::string second = ids_of(dir, generate_args(fmt::format("--max-tokens {} --resume {}", c.after, state)));
    CHECK(first + " " + second == whole);
  }
}

TEST_CASE("resume keeps saved sampler settings, flags override one setting, --seed reseeds", "[checkpoint][cli]") {
  const ScratchDir dir;
  const std::string a = quoted(dir.file("a")), b = quoted(dir.file("b"));
  ids_of(dir,
         generate_args("--prompt-ids 1,5,9 --max-tokens 4 --temperature 1.5 --top-k 0 --seed 9 --save-state " + a));

  // A new prompt is appended before generating; --top-k changes only top_k.
  ids_of(dir, generate_args("--resume " + a + " --prompt-ids 4,4 --max-tokens 3 --top-k 7 --save-state " + b));
  const CliRun inspect = run_cli(dir, "state inspect " + b);
  REQUIRE(inspect.status == 0);
  CHECK_THAT(inspect.out, Catch::Contains("temperature 1.5, top_k 7, top_p 0.95, min_p 0.05"));
  CHECK_THAT(inspect.out, Catch::Contains("seed 9"));
  CHECK_THAT(inspect.out, Catch::Contains("position 12: 12 tokens of history"));

  const std::string reseeded = ids_of(dir, generate_args("--resume " + a + " --max-tokens 12 --seed 3"));
  CHECK(ids_of(dir, generate_args("--resume " + a + " --max-tokens 12 --seed 3")) == reseeded);
  CHECK(ids_of(dir, generate_args("--resume " + a + " --max-tokens 12")) != reseeded);
}

TEST_CASE("state inspect reports model, position, sizes, options and checksums", "[checkpoint][cli]") {
  const ScratchDir dir;
  const std::string s = quoted(dir.file("s"));
  ids_of(dir, generate_args("--prompt-ids 1,5,9,3,7 --max-tokens 40 --policy slide_mean --seed 1 "
                            "--state-summaries bf16 --save-state " +
                            s));
  const CliRun r = run_cli(dir, "state inspect " + s);
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  for (const char* want :
       {"state format version 1", "MODL", "OPTS", "SEQN", "SAMP", "LAYR", "checksum ok", "loaded from", "position 45",
        "policy slide_mean", "stored as bf16", "bytes per sequence", "3 blocks in the tail sum"})
    CHECK_THAT(r.out, Catch::Contains(want));
  CHECK_THAT(r.out, !Catch::Contains("BAD"));
}

TEST_CASE("state inspect shows the transcript of a version 2 file", "[checkpoint][cli]") {
  const ScratchDir dir;
  const Model model = Model::load(kTiny);
  Session s(model, nullptr, session_options(ContextPolicy::slide_mean, 0, 1));
  s.append(std::vector<int>{1, 5, 9});
  SessionSnapshot snap = snapshot(s);
  snap.transcript = {{"user", "Hello"}, {"assistant", "Hi there"}};
  write_state_file(dir.file("chat"), snap);
  const CliRun r = run_cli(dir, "state inspect " + quoted(dir.file("chat")));
  INFO(r.out << r.err);
  REQUIRE(r.status == 0);
  for (const char* want : {"state format version 2", "TRNS", "transcript: 2 entries (1 assistant, 1 user), 13 bytes of text",
                           "position 3", "LAYR"})
    CHECK_THAT(r.out, Catch::Contains(want));
  // A resumed run continues from it (the transcript is for clients that show the conversation).
  CHECK_FALSE(ids_of(dir, generate_args("--resume " + quoted(dir.file("chat")) + " --max-tokens 3")).empty());
}

TEST_CASE("damaged and foreign state files exit with status 1 and a message", "[checkpoint][cli]") {
  const ScratchDir dir;
  const std::string good_path = dir.file("good");
  ids_of(dir, generate_args("--prompt-ids 1,5,9,3,7 --max-tokens 20 --seed 1 --policy slide_mean --save-state " +
                            quoted(good_path)));
  const std::string good = slurp(good_path);
  const auto frames = frames_of(good);
  REQUIRE(frames.size() == 6);

  std::string flipped = good;
  flipped[frames[4].offset + 40] ^= 1;
  std::string newer = good;
  newer[8] = 9;
  const std::pair<std::string, std::string> files[] = {
      {"", "is empty"},
      {good.substr(0, frames[3].offset), "truncated"},
      {flipped, "fails its checksum"},
      {newer, "newer than this engine reads"},
      {"not a state file at all", "not an mhla state file"},
  };
  const std::string out = dir.file("out");
  for (const auto& [bytes, expect] : files) {
    INFO(expect);
    const std::string path = dir.file("bad");
    spill(path, bytes);
    check_refused(
        run_cli(dir, generate_args("--resume " + quoted(path) + " --max-tokens 2 --save-state " + quoted(out))),
        expect);
    CHECK_FALSE(std::filesystem::exists(out));
    check_refused(run_cli(dir, "state inspect " + quoted(path)), expect);
  }
  const std::string gqa = kDataDir + "/models/tiny-gqa";
  check_refused(run_cli(dir, "generate --model " + quoted(gqa) + " --resume " + quoted(good_path) + " --max-tokens 2"),
                "another model");
  check_refused(run_cli(dir, generate_args("--resume " + quoted(good_path) + " --policy strict --max-tokens 2")),
                "only strict can change");
  check_refused(run_cli(dir, generate_args("--max-tokens 2")), "--resume FILE");
}
