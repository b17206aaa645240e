// Sessions: seeded sampling is deterministic, forks continue identically, EOS and stop ids end
// a reply unless told otherwise, and the strict window ends generation with `length`.
#include <catch2/catch.hpp>

#include "mhla/error.hpp"
#include "mhla/session.hpp"
#include "mhla/text_stream.hpp"

using namespace mhla;

namespace {
const std::string kData = MHLA_TEST_DATA_DIR;

SessionOptions sampled(unsigned long long seed) {
  SessionOptions o;
  o.sampling.temperature = 0.9f;
  o.sampling.top_k = 20;
  o.sampling.seed = seed;
  o.prefill_chunk = 5;
  return o;
}
StopCriteria up_to(int n) {
  StopCriteria s;
  s.max_tokens = n;
  return s;
}
}  // namespace

TEST_CASE("seeded sampling is deterministic and a fork continues identically", "[session]") {
  const Model m = Model::load(kData + "/models/tiny-gqa");
  const std::vector<int> prompt = {1, 10, 20, 30, 40};
  Session a(m, nullptr, sampled(11)), b(m, nullptr, sampled(11)), c(m, nullptr, sampled(12));
  a.append(prompt);
  b.append(prompt);
  c.append(prompt);
  const auto ra = a.generate(up_to(12));
  CHECK(ra.tokens == b.generate(up_to(12)).tokens);
  CHECK(ra.tokens != c.generate(up_to(12)).tokens);
  CHECK(ra.reason == StopReason::length);

  Session fork = a;
  const auto next_a = a.generate(up_to(8));
  const auto next_fork = fork.generate(up_to(8));
  CHECK(next_a.tokens == next_fork.tokens);
  CHECK(a.next_logits() == fork.next_logits());
}

TEST_CASE("EOS and stop ids end a reply while ignore_eos goes on", "[session]") {
  const Model m = Model::load(kData + "/models/tiny");
  SessionOptions greedy;
  greedy.sampling.temperature = 0;
  Session probe(m, nullptr, greedy);
  probe.append(std::vector<int>{1, 7, 8});
  const int first = probe.generate(up_to(1)).tokens.at(0);

  StopCriteria eos = up_to(6);
  eos.eos_id = first;
  Session s1(m, nullptr, greedy);
  s1.append(std::vector<int>{1, 7, 8});
  const auto r1 = s1.generate(eos);
  CHECK(r1.tokens == std::vector<int>{first});
  CHECK(r1.reason == StopReason::stop);

  eos.ignore_eos = true;
  Session s2(m, nullptr, greedy);
  s2.append(std::vector<int>{1, 7, 8});
  CHECK(s2.generate(eos).tokens.size() == 6u);

  StopCriteria ids = up_to(6);
  ids.stop_ids = {first};
  Session s3(m, nullptr, greedy);
  s3.append(std::vector<int>{1, 7, 8});
  CHECK(s3.generate(ids).reason == StopReason::stop);
}

TEST_CASE("generation stops with length at the trained window under strict", "[session]") {
  const Model m = Model::load(kData + "/models/tiny");
  Session s(m, nullptr, sampled(3));
  std::vector<int> prompt(28, 5);
  prompt[0] = 1;
  s.append(prompt);
  const auto r = s.generate(up_to(100));
  CHECK(r.reason == StopReason::length);
  CHECK(r.tokens.size() == 4u);
  CHECK(s.position() == m.trained_window());
  s.set_policy(ContextPolicy::slide_mean);  // strict -> slide is allowed and goes on
  CHECK(s.generate(up_to(5)).tokens.size() == 5u);
  CHECK_THROWS_AS(s.set_policy(ContextPolicy::strict), Error);
}

TEST_CASE("text sessions stream whole UTF-8 and withhold stop strings", "[session]") {
  const Model m = Model::load(kData + "/models/tiny");
  const Tokenizer tok = Tokenizer::load(kData + "/models/tiny/tokenizer.model");
  Session s(m, &tok, sampled(5));
  s.append(s.encode("The license", true));
  std::string streamed;
  const auto r = s.generate(up_to(15), [&](int, std::string_view text) {
    streamed += text;
    return true;
  });
  CHECK(streamed == r.text);
  CHECK(utf8_complete_prefix(r.text) == r.text.size());

  Session without(m, nullptr, sampled(5));
  CHECK_THROWS_WITH(without.encode("hi", true), Catch::Contains("token ids only"));
}

TEST_CASE("a callback returning false cancels", "[session]") {
  const Model m = Model::load(kData + "/models/tiny");
  Session s(m, nullptr, sampled(9));
  s.append(std::vector<int>{1, 2, 3});
  int calls = 0;
  const auto r = s.generate(up_to(10), [&](int, std::string_view) { return ++calls < 3; });
  CHECK(r.cancelled);
  CHECK(r.tokens.size() == 3u);
}
