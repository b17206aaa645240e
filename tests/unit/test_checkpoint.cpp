// Saving and resuming sessions in one process: exact continuation at every kind of split
// point, greedy and sampled; forks; policy and sampler changes on resume; bf16 summaries; the
// committed samples of every format version; transcripts (format version 2); the model
// fingerprint.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>

#include "mhla/checkpoint.hpp"
#include "mhla/error.hpp"
#include "support/reference.hpp"
#include "test_checkpoint_helpers.hpp"

using namespace mhla;
using namespace mhla::test;
namespace fs = std::filesystem;

namespace {

const std::vector<int> kPrompt = {1, 5, 9, 3, 7};

struct Split {
  const char* name;
  ContextPolicy policy;
  int before;  // tokens generated before saving; the prompt has 5
};

// Position 5 + before: inside block 1 (11), on a block boundary (16), past the trained window of
// 32 tokens (45, slide policies).
const Split kSplits[] = {{"inside a block", ContextPolicy::strict, 6},
                         {"on a block boundary", ContextPolicy::strict, 11},
                         {"past the window, slide", ContextPolicy::slide, 40},
                         {"past the window, slide_mean", ContextPolicy::slide_mean, 40}};

}  // namespace

TEST_CASE("a saved session resumes bit-identically at every kind of split point", "[checkpoint]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  for (const Split& split : kSplits) {
    for (const float temperature : {0.0f, 1.5f}) {
      INFO(split.name << ", temperature " << temperature);
      const int after = split.policy == ContextPolicy::strict ? 32 - 5 - split.before : 12;
      const auto opt = session_options(split.policy, temperature, 11);

      Session whole(model, nullptr, opt);
      whole.append(kPrompt);
      Trace uninterrupted;
      generate_into(whole, split.before + after, uninterrupted);

      Session first(model, nullptr, opt);
      first.append(kPrompt);
      Trace resumed;
      generate_into(first, split.before, resumed);
      const std::string path = dir.file("split.mhlastate");
      save_session(path, first);
      Session second = resume(read_state_file(path, model), model, nullptr);
      CHECK(second.history() == first.history());
      CHECK(second.next_logits() == first.next_logits());
      generate_into(second, after, resumed);

      CHECK(resumed.tokens == uninterrupted.tokens);
      CHECK(resumed.logits == uninterrupted.logits);
    }
  }
}

TEST_CASE("a prompt appended after resuming continues as in one session", "[checkpoint]") {
  const Model model = Model::load(kDataDir + "/models/tiny-gqa");
  const ScratchDir dir;
  const auto opt = session_options(ContextPolicy::slide_mean, 1.5f, 5);
  const std::vector<int> more = {4, 8, 15, 16, 23, 42, 17, 3, 9};

  Session whole(model, nullptr, opt);
  whole.append(kPrompt);
  Trace a;
  generate_into(whole, 9, a);
  whole.append(more);
  generate_into(whole, 20, a);

  Session first(model, nullptr, opt);
  first.append(kPrompt);
  Trace b;
  generate_into(first, 9, b);
  save_session(dir.file("s"), first);
  Session second = resume(read_state_file(dir.file("s"), model), model, nullptr);
  second.append(more);
  generate_into(second, 20, b);
  CHECK(b.tokens == a.tokens);
  CHECK(b.logits == a.logits);
}

TEST_CASE("forks continue independently and one snapshot branches many times", "[checkpoint]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  Session base(model, nullptr, session_options(ContextPolicy::slide_mean, 1.5f, 3));
  base.append(kPrompt);
  Trace warmup;
  generate_into(base, 14, warmup);

  // An in-memory copy is a fork: no prefill, the same continuation, and no shared state.
  Session fork = base;
  Trace from_base, from_fork;
  generate_into(base, 20, from_base);
  CHECK(fork.position() == 19);
  generate_into(fork, 20, from_fork);
  CHECK(from_fork.tokens == from_base.tokens);
  CHECK(from_fork.logits == from_base.logits);

  const SessionSnapshot saved = snapshot(fork);
  std::vector<Trace> branches(3);
  for (size_t i = 0; i < branches.size(); ++i) {
    Session branch = resume(saved, model, nullptr);
    if (i == 2) branch.sampler().reseed(99);
    generate_into(branch, 16, branches[i]);
  }
  CHECK(branches[0].tokens == branches[1].tokens);
  CHECK(branches[0].logits == branches[1].logits);
  CHECK(branches[2].tokens != branches[0].tokens);
}

TEST_CASE("resume may widen strict to a slide policy and keeps sampler settings", "[checkpoint]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  const auto strict = session_options(ContextPolicy::strict, 1.5f, 21);
  auto slide = strict;
  slide.policy = ContextPolicy::slide_mean;

  // Inside the window the policies agree, so a strict session saved there continues as a
  // slide_mean session would have, past the window too.
  Session whole(model, nullptr, slide);
  whole.append(kPrompt);
  Trace a;
  generate_into(whole, 40, a);

  Session first(model, nullptr, strict);
  first.append(kPrompt);
  Trace b;
  generate_into(first, 12, b);
  save_session(dir.file("strict"), first);
  const SessionSnapshot saved = read_state_file(dir.file("strict"), model);
  CHECK(saved.state.policy == ContextPolicy::strict);
  CHECK(saved.sampling.temperature == 1.5f);
  CHECK(saved.sampling.seed == 21);
  CHECK(saved.prefill_chunk == 3);
  Session second = resume(saved, model, nullptr, {ContextPolicy::slide_mean, std::nullopt});
  CHECK(second.policy() == ContextPolicy::slide_mean);
  generate_into(second, 28, b);
  CHECK(b.tokens == a.tokens);
  CHECK(b.logits == a.logits);

  save_session(dir.file("slide"), second);
  const SessionSnapshot slid = read_state_file(dir.file("slide"), model);
  CHECK_THROWS_WITH(resume(slid, model, nullptr, {ContextPolicy::strict, std::nullopt}),
                    Catch::Contains("only strict can change"));
  CHECK_THROWS_WITH(resume(slid, model, nullptr, {ContextPolicy::slide, std::nullopt}),
                    Catch::Contains("only strict can change"));
  CHECK(resume(slid, model, nullptr, {std::nullopt, 64}).prefill_chunk() == 64);
}

TEST_CASE("bf16 summaries: the file says so, resume is exact for the stored values", "[checkpoint]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  Session s(model, nullptr, session_options(ContextPolicy::slide_mean, 1.5f, 8));
  s.append(kPrompt);
  Trace t;
  generate_into(s, 40, t);
  save_session(dir.file("f32"), s);
  save_session(dir.file("bf16"), s, SummaryStorage::bf16);
  const auto& layer = s.state().layers.front();
  const auto summary_bytes =
      s.state().layers.size() * layer.recent_count() * layer.layout().kv_heads * layer.matrix_elems() * 2;
  CHECK(fs::file_size(dir.file("f32")) - fs::file_size(dir.file("bf16")) == summary_bytes);

  const SessionSnapshot from_file = read_state_file(dir.file("bf16"), model);
  const SessionSnapshot in_memory = snapshot(s, SummaryStorage::bf16);
  CHECK(from_file.summaries == SummaryStorage::bf16);
  for (size_t l = 0; l < from_file.state.layers.size(); ++l)
    CHECK(tensors_by_distance(from_file.state.layers[l]) == tensors_by_distance(in_memory.state.layers[l]));

  // Saving what was resumed from bf16 stores the same bytes again.
  Session again = resume(from_file, model, nullptr);
  save_session(dir.file("bf16-again"), again, SummaryStorage::bf16);
  CHECK(slurp(dir.file("bf16-again")) == slurp(dir.file("bf16")));

  Trace x, y;
  Session one = resume(from_file, model, nullptr), two = resume(in_memory, model, nullptr);
  generate_into(one, 10, x);
  generate_into(two, 10, y);
  CHECK(x.logits == y.logits);

  const StateFileReport report = inspect_state_file(dir.file("bf16"));
  REQUIRE(report.ok());
  CHECK_THAT(report.sections[1].details.front(), Catch::Contains("stored as bf16"));
}

// The figure recorded in docs/state-format.md: a model with a 2048-token window, its summaries
// rounded to bf16 once at the middle, or at every block boundary (as if kept in bf16 all along).
TEST_CASE("bf16 summaries change logits over 2K tokens only slightly", "[checkpoint][bf16]") {
  ModelConfig c;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 2;
  c.intermediate_size = 128;
  c.vocab_size = 256;
  c.block_size = 64;
  const Model model = Model::random(c, 32, 2024);
  REQUIRE(model.trained_window() == 2048);
  std::mt19937 rng(5);
  std::vector<int> ids(2048);
  for (auto& id : ids) id = static_cast<int>(rng() % static_cast<unsigned>(c.vocab_size));

  SessionOptions o;
  o.prefill_chunk = 64;
  // The logits after every token, round-tripping the state through bf16 where `round_trip` says.
  auto run = [&](auto round_trip) {
    Session s(model, nullptr, o);
    std::vector<float> all;
    for (size_t t = 0; t < ids.size(); ++t) {
      if (t > 0 && round_trip(t)) s = resume(snapshot(s, SummaryStorage::bf16), model, nullptr);
      s.append({&ids[t], 1});
      all.insert(all.end(), s.next_logits().begin(), s.next_logits().end());
    }
    return all;
  };
  const auto reference = run([](size_t) { return false; });
  const auto once = run([](size_t t) { return t == 1024; });
  const auto every_block = run([](size_t t) { return t % 64 == 0; });
  const size_t half = reference.size() / 2;
  const std::vector<float> ref_tail(reference.begin() + half, reference.end()),
      once_tail(once.begin() + half, once.end());
  const double once_error = mhla::test::relative_error(once_tail, ref_tail);
  const double every_error = mhla::test::relative_error(every_block, reference);
  const auto V = static_cast<std::ptrdiff_t>(c.vocab_size);
  auto greedy = [&](const std::vector<float>& v, std::ptrdiff_t at) {
    return std::max_element(v.begin() + at, v.begin() + at + V) - v.begin();
  };
  int flips = 0;  // positions whose greedy choice changes when summaries are kept in bf16 all along
  for (std::ptrdiff_t at = 0; at < static_cast<std::ptrdiff_t>(reference.size()); at += V)
    flips += greedy(reference, at) != greedy(every_block, at);
  CAPTURE(once_error, every_error, flips);
  CHECK(std::vector<float>(once.begin(), once.begin() + half) ==
        std::vector<float>(reference.begin(), reference.begin() + half));
  CHECK(once_error > 0);
  CHECK(once_error < 1e-2);
  CHECK(every_error < 1e-2);
}

TEST_CASE("a transcript travels in the state file, and a file without one stays version 1", "[checkpoint]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  const ScratchDir dir;
  Session s(model, nullptr, session_options(ContextPolicy::slide_mean, 0.8f, 3));
  s.append(kPrompt);
  Trace t;
  generate_into(s, 12, t);
  const std::vector<TranscriptEntry> transcript = {
      {"system", "Be brief."},
      {"user", "Hello,\n\"quoted\" and \xc3\xbcnicode"},
      {"assistant", std::string("any bytes: \0\xff\x01", 14)},
      {"text", ""},
  };
  SessionSnapshot with = snapshot(s);
  with.transcript = transcript;
  write_state_file(dir.file("chat"), with);
  save_session(dir.file("plain"), s);

  const SessionSnapshot read = read_state_file(dir.file("chat"), model);
  CHECK(read.transcript == transcript);
  CHECK(read.history == s.history());
  CHECK(read_state_file(dir.file("plain"), model).transcript.empty());

  const StateFileReport chat = inspect_state_file(dir.file("chat"));
  REQUIRE(chat.ok());
  CHECK(chat.version == 2);
  std::vector<std::string> tags;
  for (const auto& section : chat.sections) tags.push_back(section.tag);
  CHECK(tags == std::vector<std::string>{"MODL", "OPTS", "SEQN", "SAMP", "TRNS", "LAYR", "LAYR"});
  size_t text_bytes = 0;
  for (const auto& e : transcript) text_bytes += e.content.size();
  CHECK(chat.sections[4].details ==
        std::vector<std::string>{fmt::format("transcript: 4 entries (1 assistant, 1 system, 1 text, 1 user), {} bytes "
                                             "of text",
                                             text_bytes)});
  CHECK(chat.sections[5].details.front().starts_with("layer 0:"));
  const StateFileReport plain = inspect_state_file(dir.file("plain"));
  CHECK(plain.version == 1);
  CHECK(plain.sections.size() == 6);
  // Without a transcript the file is what version 1 always was, byte for byte.
  write_state_file(dir.file("snapshot"), snapshot(s));
  CHECK(slurp(dir.file("snapshot")) == slurp(dir.file("plain")));

  // The transcript changes nothing about the session: both files continue identically.
  Session a = resume(read, model, nullptr);
  Session b = resume(read_state_file(dir.file("plain"), model), model, nullptr);
  Trace ta, tb;
  generate_into(a, 8, ta);
  generate_into(b, 8, tb);
  CHECK(ta.tokens == tb.tokens);
  CHECK(ta.logits == tb.logits);

  // A role the format cannot hold is refused before anything is written.
  for (const std::string& role : {std::string(), std::string("two words"), std::string(33, 'r'), std::string("\x01")}) {
    SessionSnapshot bad = snapshot(s);
    bad.transcript = {{"user", "fine"}, {role, "x"}};
    INFO("role '" << role << "'");
    CHECK_THROWS_WITH(write_state_file(dir.file("bad"), bad), Catch::Contains("transcript entry 1 has the role"));
    CHECK_FALSE(fs::exists(dir.file("bad")));
  }
}

TEST_CASE("the committed state file of every format version still loads", "[checkpoint][compat]") {
  const Model model = Model::load(kDataDir + "/models/tiny");
  int found = 0;
  for (const auto& e : fs::directory_iterator(kDataDir + "/state")) {
    if (e.path().extension() != ".mhlastate") continue;
    ++found;
    INFO(e.path().filename().string());
    const SessionSnapshot saved = read_state_file(e.path().string(), model);
    CHECK(saved.state.position() == 45);
    CHECK(saved.state.policy == ContextPolicy::slide_mean);
    CHECK(saved.sampling.seed == 7);
    CHECK(saved.state.layers.front().tail_blocks() == 3);
    CHECK(std::vector<int>(saved.history.begin(), saved.history.begin() + 5) == kPrompt);
    // The version 2 sample is the version 1 one with a transcript (docs/state-format.md).
    if (e.path().filename().string().starts_with("v1-"))
      CHECK(saved.transcript.empty());
    else
      CHECK(saved.transcript == std::vector<TranscriptEntry>{{"system", "Be brief."},
                                                              {"user", "What does sorted() do?"},
                                                              {"assistant", "It returns a new sorted list."}});

    // The stored state is what this engine computes for that history (up to rounding).
    SessionOptions o;
    o.policy = ContextPolicy::slide_mean;
    Session fresh(model, nullptr, o);
    fresh.append(saved.history);
    CHECK(mhla::test::relative_error(saved.next_logits, fresh.next_logits()) < 1e-4);
    for (size_t l = 0; l < saved.state.layers.size(); ++l)
      CHECK(mhla::test::relative_error(tensors_by_distance(saved.state.layers[l]),
                                       tensors_by_distance(fresh.state().layers[l])) <
            (saved.summaries == SummaryStorage::bf16 ? 1e-2 : 1e-4));
    Session resumed = resume(saved, model, nullptr);
    Trace t;
    generate_into(resumed, 5, t);
    CHECK(resumed.position() == 50);
  }
  CHECK(found >= 3);
}

TEST_CASE("model fingerprints tell models apart", "[checkpoint]") {
  const Model a = Model::load(kDataDir + "/models/tiny");
  const Model a2 = Model::load(kDataDir + "/models/tiny");
  const Model b = Model::load(kDataDir + "/models/tiny-gqa");
  CHECK(a.fingerprint() == a2.fingerprint());
  CHECK(a.fingerprint().weights_hash != b.fingerprint().weights_hash);
  CHECK(a.fingerprint().tensors.front().name == "model.embeddings.weight");
  CHECK(a.fingerprint().tensors.size() == 2 + 2 * 12u);

  const Model r1 = Model::random(a.config(), 4, 1), r2 = Model::random(a.config(), 4, 2);
  CHECK(r1.fingerprint().tensors == r2.fingerprint().tensors);
  CHECK(r1.fingerprint().weights_hash != r2.fingerprint().weights_hash);
  CHECK(r1.fingerprint().weights_hash == Model::random(a.config(), 4, 1).fingerprint().weights_hash);
}
