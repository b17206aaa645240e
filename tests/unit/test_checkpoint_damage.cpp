// Damaged and foreign state files on disk: every one is refused with mhla::Error naming the
// problem, never a crash; and a bounded randomized-mutation run over the loader.
#include <catch2/catch.hpp>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <random>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "test_checkpoint_helpers.hpp"

using namespace mhla;
using namespace mhla::test;
namespace fs = std::filesystem;

namespace {

// A state file past the trained window (tail and recent summaries in use); with a transcript
// it is a version 2 file (a TRNS section after SAMP), else version 1.
std::string make_state(const Model& model, const ScratchDir& dir, SummaryStorage storage = SummaryStorage::f32,
                       bool transcript = false) {
  Session s(model, nullptr, session_options(ContextPolicy::slide_mean, 1.5f, 4));
  s.append(std::vector<int>{1, 5, 9, 3, 7});
  Trace t;
  generate_into(s, 40, t);
  const std::string path =
      dir.file(fmt::format("good-{}{}.mhlastate", to_string(storage), transcript ? "-transcript" : ""));
  SessionSnapshot snap = snapshot(s, storage);
  if (transcript) snap.transcript = {{"user", "What does sorted() do?"}, {"assistant", "It returns a new list."}};
  write_state_file(path, snap);
  return path;
}

std::string read_error(const std::string& path, const Model& model) {
  try {
    read_state_file(path, model);
  } catch (const Error& e) {
    return e.what();
  }
  return "(loaded)";
}

// Whether inspect finds the file whole (it throws when not even the preamble holds).
bool inspect_accepts(const std::string& path) {
  try {
    return inspect_state_file(path).ok();
  } catch (const Error&) {
    return false;
  }
}

void store_u64(std::string& b, size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b[at + i] = static_cast<char>(v >> (8 * i));
}

// Recomputes the preamble's and every section's checksum, so damage reaches the decoders.
void fix_checksums(std::string& b) {
  if (b.size() < 28) return;
  store_u64(b, 20, XXH3_64bits(b.data(), 20));
  for (const Frame& f : frames_of(b)) store_u64(b, f.end() - 8, XXH3_64bits(b.data() + f.offset, 12 + f.length));
}

}  // namespace

TEST_CASE("truncation at every section boundary is refused", "[checkpoint][damage]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  const std::string path = dir.file("cut");
  for (const bool transcript : {false, true}) {
    const std::string good = slurp(make_state(model, dir, SummaryStorage::f32, transcript));
    const auto frames = frames_of(good);
    REQUIRE(frames.size() == (transcript ? 5 : 4) + 2);
    REQUIRE(frames.back().end() == good.size());
    std::vector<size_t> cuts = {1, 7, 8, 12, 27, 28};
    for (const Frame& f : frames)
      for (const size_t c :
           {f.offset + 3, f.offset + 12, f.offset + 12 + f.length / 2, f.end() - 8, f.end() - 1, f.end()})
        cuts.push_back(c);
    for (const size_t cut : cuts) {
      if (cut >= good.size()) continue;
      INFO((transcript ? "version 2" : "version 1") << ", cut at " << cut);
      spill(path, good.substr(0, cut));
      CHECK_THAT(read_error(path, model), Catch::Contains("truncated") || Catch::Contains("ends before"));
      CHECK_FALSE(inspect_accepts(path));
    }
  }
  spill(path, "");
  CHECK_THAT(read_error(path, model), Catch::Contains("is empty"));
  CHECK_THROWS_WITH(inspect_state_file(path), Catch::Contains("is empty"));
}

TEST_CASE("a flipped byte in any section is refused", "[checkpoint][damage]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  const std::pair<SummaryStorage, bool> files[] = {
      {SummaryStorage::f32, false}, {SummaryStorage::bf16, false}, {SummaryStorage::f32, true}};
  for (const auto& [storage, transcript] : files) {
    const std::string good = slurp(make_state(model, dir, storage, transcript));
    std::vector<std::pair<size_t, bool>> at;  // byte, whether only a checksum can notice
    for (size_t i = 0; i < 28; ++i) at.push_back({i, false});
    for (const Frame& f : frames_of(good)) {
      at.push_back({f.offset + 5, false});  // a length: the framing after it shifts
      for (const size_t i : {f.offset, f.offset + 12, f.offset + 12 + f.length / 3, f.end() - 9, f.end() - 1})
        at.push_back({i, true});
    }
    const std::string path = dir.file("flipped");
    for (const auto& [i, checksum_only] : at) {
      INFO(to_string(storage) << (transcript ? " with a transcript" : "") << ", byte " << i);
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ 0x10);
      spill(path, bad);
      const std::string error = read_error(path, model);
      CHECK(error != "(loaded)");
      if (checksum_only) {
        CHECK_THAT(error, Catch::Contains("checksum"));
        const StateFileReport r = inspect_state_file(path);
        CHECK_FALSE(r.ok());
        CHECK(std::count_if(r.sections.begin(), r.sections.end(), [](const auto& s) { return !s.checksum_ok; }) == 1);
      }
    }
  }
}

TEST_CASE("foreign, newer and mismatched files are refused with what to do", "[checkpoint][damage]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  const std::string path = make_state(model, dir);
  const std::string good = slurp(path);

  const Model other = Model::load(kDataDir + "/models/tiny-gqa");
  CHECK_THAT(read_error(path, other),
             Catch::Contains("another model") && Catch::Contains("hidden_size is 32 there and 64 here"));
  const Model same_shape = Model::random(model.config(), model.mixing_blocks(), 77);
  CHECK_THAT(read_error(path, same_shape), Catch::Contains("the weights differ"));
  ModelLoadOptions small_blocks;
  small_blocks.block_size = 4;
  const Model reblocked = Model::load(kDataDir + "/models/tiny", small_blocks);
  CHECK_THAT(read_error(path, reblocked), Catch::Contains("block size 8") && Catch::Contains("block size 4"));

  CHECK_THAT(read_error(kDataDir + "/models/tiny/model.safetensors", model), Catch::Contains("not an mhla state file"));
  CHECK_THAT(read_error(kDataDir + "/models/tiny", model), Catch::Contains("is a directory"));
  CHECK_THAT(read_error(dir.file("missing"), model), Catch::Contains("cannot open"));

  std::string newer = good;
  newer[8] = static_cast<char>(kStateFormatVersion + 1);
  fix_checksums(newer);
  spill(dir.file("newer"), newer);
  CHECK_THAT(read_error(dir.file("newer"), model), Catch::Contains("newer than this engine reads"));
  CHECK_THROWS_WITH(inspect_state_file(dir.file("newer")), Catch::Contains("newer"));

  spill(dir.file("trailing"), good + "x");
  CHECK_THAT(read_error(dir.file("trailing"), model), Catch::Contains("follow the last section"));

  // Damage behind valid checksums reaches the decoders: a history that disagrees with the
  // position, and layer counts that cannot describe the state.
  const auto frames = frames_of(good);
  std::string history = good;
  store_u64(history, frames[2].offset + 12 + 8, 44);
  fix_checksums(history);
  spill(dir.file("history"), history);
  CHECK_THAT(read_error(dir.file("history"), model), Catch::Contains("history holds 44 tokens"));
  std::string counts = good;
  store_u64(counts, frames[4].offset + 12 + 4, 0);  // tail blocks of layer 0
  fix_checksums(counts);
  spill(dir.file("counts"), counts);
  CHECK_THAT(read_error(dir.file("counts"), model),
             Catch::Contains("inconsistent state") && Catch::Contains("damaged"));
}

TEST_CASE("a version that disagrees with the sections, and a damaged transcript, are refused", "[checkpoint][damage]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  const std::string v1 = slurp(make_state(model, dir));
  const std::string v2 = slurp(make_state(model, dir, SummaryStorage::f32, true));
  auto refused = [&](std::string bytes, const std::string& expect) {
    fix_checksums(bytes);
    spill(dir.file("bad"), bytes);
    CHECK_THAT(read_error(dir.file("bad"), model), Catch::Contains(expect));
    CHECK_FALSE(inspect_accepts(dir.file("bad")));
  };

  // Relabeled versions: the section count, or the section where TRNS belongs, gives them away.
  std::string relabeled = v1;
  relabeled[8] = 2;
  refused(relabeled, "the preamble counts 6 sections but a 2-layer model needs 7 in format version 2");
  relabeled[16] = 7;
  refused(relabeled, "'LAYR' is there where 'TRNS' belongs");
  std::string older = v2;
  older[8] = 1;
  refused(older, "the preamble counts 7 sections but a 2-layer model needs 6 in format version 1");

  // Damage inside the transcript behind valid checksums reaches its decoder.
  const Frame trns = frames_of(v2)[4];
  const size_t payload = trns.offset + 12;
  REQUIRE(v2.substr(trns.offset, 4) == "TRNS");
  std::string role = v2;
  role[payload + 8] = '\x01';  // the first role's first byte
  refused(role, "transcript entry 0 has a role of 4 bytes that are not 1 to 32 printable ASCII characters");
  std::string count = v2;
  store_u64(count, payload, 0xffffffffULL);  // the entry count (and the first role's length)
  refused(count, "the transcript needs 4294967295 x 8 bytes");
  std::string length = v2;
  length[payload + 4 + 4 + 4 + 3] = '\x7f';  // the first content's length, past the section
  refused(length, "a string needs");
  std::string fewer = v2;
  fewer[payload] = 1;  // one entry claimed, two there
  refused(fewer, "unexplained bytes at the end of the section");
}

TEST_CASE("saving is atomic and leaves no temporary files", "[checkpoint][damage]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  const std::string path = make_state(model, dir);
  Session s(model, nullptr, {});
  s.append(std::vector<int>{1, 2, 3});
  save_session(path, s);  // replaces the file whole
  CHECK(read_state_file(path, model).state.position() == 3);
  CHECK_THROWS_WITH(save_session(dir.file("no/such/dir/s"), s), Catch::Contains("cannot write"));
  for (const auto& e : fs::directory_iterator(dir.path()))
    CHECK(e.path().filename().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("randomized mutations never crash the loader", "[checkpoint][damage][fuzz]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  // Half the rounds mutate a version 1 file, half a version 2 file with its transcript.
  const std::string goods[] = {slurp(make_state(model, dir, SummaryStorage::bf16)),
                               slurp(make_state(model, dir, SummaryStorage::bf16, true))};
  const std::string path = dir.file("mutant");
  std::mt19937_64 rng(20240611);
  auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  int loaded = 0, refused = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string b = goods[round % 4 < 2 ? 0 : 1];
    const int edits = 1 + static_cast<int>(pick(3));
    for (int e = 0; e < edits; ++e) {
      switch (pick(6)) {
        case 0: b[pick(b.size())] ^= static_cast<char>(1 << pick(8)); break;
        case 1: b[pick(b.size())] = static_cast<char>(rng()); break;
        case 2: b.resize(pick(b.size() + 1)); break;
        case 3: b.insert(pick(b.size() + 1), std::string(1 + pick(16), static_cast<char>(rng()))); break;
        case 4: {
          const size_t at = pick(b.size());
          b.erase(at, 1 + pick(64));
          break;
        }
        default: {  // a length or count field set to something large
          const size_t at = pick(b.size() > 8 ? b.size() - 8 : 0);
          if (b.size() >= 8) store_u64(b, at, rng() >> pick(64));
        }
      }
      if (b.empty()) b.push_back('M');
    }
    // Most mutations are caught by a checksum; with fixed checksums they reach the decoders.
    if (round % 2 == 0) fix_checksums(b);
    spill(path, b);
    INFO("round " << round);
    try {
      const SessionSnapshot s = read_state_file(path, model);
      Session resumed = resume(s, model, nullptr);
      CHECK(resumed.position() == static_cast<long long>(resumed.history().size()));
      ++loaded;
    } catch (const Error&) {
      ++refused;
    }
    try {
      inspect_state_file(path);
    } catch (const Error&) {
    }
  }
  CAPTURE(loaded, refused);
  CHECK(loaded + refused == 3000);
  CHECK(refused > 2000);
}
