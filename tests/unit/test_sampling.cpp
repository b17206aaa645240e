#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "mhla/error.hpp"
#include "mhla/sampling.hpp"

namespace {

using mhla::Sampler;
using mhla::SamplingParams;

SamplingParams params(float temperature, std::uint64_t seed = 1) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

std::vector<float> random_logits(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> l(n);
  for (auto& x : l) x = dist(rng);
  return l;
}

std::vector<int> draws(Sampler& s, const std::vector<float>& logits, int n) {
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(s.sample(logits));
  return out;
}

// Frequencies of each token over n draws.
std::vector<double> histogram(Sampler& s, const std::vector<float>& logits, int n) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) f[std::size_t(s.sample(logits))] += 1.0 / n;
  return f;
}

}  // namespace

TEST_CASE("greedy sampling picks the argmax, lowest id on ties", "[sampling]") {
  Sampler s(params(0.0f));
  CHECK(s.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 2.9f}) == 1);
  CHECK(s.sample(std::vector<float>{1.0f, 5.0f, 5.0f, 5.0f}) == 1);
  const float ninf = -std::numeric_limits<float>::infinity();
  CHECK(s.sample(std::vector<float>{ninf, ninf, -7.0f}) == 2);
}

TEST_CASE("seeded sampling is deterministic and seeds differ", "[sampling]") {
  const auto logits = random_logits(50, 7);
  Sampler a(params(1.0f, 42)), b(params(1.0f, 42)), c(params(1.0f, 43));
  const auto da = draws(a, logits, 200);
  CHECK(da == draws(b, logits, 200));
  CHECK(da != draws(c, logits, 200));

  a.reseed(42);
  CHECK(draws(a, logits, 200) == da);
}

TEST_CASE("save_rng / load_rng continue the exact sequence", "[sampling]") {
  const auto logits = random_logits(100, 3);
  Sampler a(params(0.9f, 5));
  draws(a, logits, 17);
  const std::string state = a.save_rng();
  const auto expected = draws(a, logits, 300);

  Sampler b(params(0.9f, 999));
  b.load_rng(state);
  CHECK(draws(b, logits, 300) == expected);

  a.load_rng(state);  // rewinding the same sampler works too
  CHECK(draws(a, logits, 300) == expected);

  SECTION("set_params keeps the generator where it is") {
    Sampler c(params(0.9f, 5));
    Sampler d(params(0.9f, 5));
    draws(c, logits, 5);
    draws(d, logits, 5);
    d.set_params(params(0.9f, 12345));
    CHECK(draws(c, logits, 50) == draws(d, logits, 50));
  }
  SECTION("malformed states are rejected and leave the generator untouched") {
    Sampler c(params(0.9f, 5));
    const std::string before = c.save_rng();
    CHECK_THROWS_AS(c.load_rng(""), mhla::Error);
    CHECK_THROWS_AS(c.load_rng("hello world"), mhla::Error);
    CHECK_THROWS_AS(c.load_rng(state.substr(0, state.size() / 2)), mhla::Error);
    CHECK_THROWS_AS(c.load_rng(state + " 17"), mhla::Error);
    CHECK_THROWS_AS(c.load_rng("mt19937_64 1 2 x"), mhla::Error);
    CHECK(c.save_rng() == before);
  }
}

TEST_CASE("top-k = 1 and a tiny top-p are greedy", "[sampling]") {
  Sampler greedy(params(0.0f));
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(64, seed);
    logits[std::size_t(seed % 64)] = logits[std::size_t((seed + 9) % 64)] = 10.0f;  // a tie at the top
    const int best = greedy.sample(logits);

    SamplingParams k1 = params(1.5f, seed);
    k1.top_k = 1;
    Sampler sk(k1);
    SamplingParams p0 = params(1.5f, seed);
    p0.top_p = 1e-6f;
    Sampler sp(p0);
    for (int i = 0; i < 10; ++i) {
      CHECK(sk.sample(logits) == best);
      CHECK(sp.sample(logits) == best);
    }
  }
}

TEST_CASE("top-k, top-p and min-p keep the expected tokens", "[sampling]") {
  // Probabilities at temperature 1: about 0.50, 0.30, 0.15, 0.05.
  const std::vector<float> logits{std::log(0.50f), std::log(0.30f), std::log(0.15f), std::log(0.05f)};
  SamplingParams p = params(1.0f, 11);
  SECTION("top-k") { p.top_k = 2; }
  SECTION("top-p") { p.top_p = 0.75f; }
  SECTION("min-p") { p.min_p = 0.5f; }  // keeps p >= 0.25
  Sampler s(p);
  const auto f = histogram(s, logits, 4000);
  CHECK(f[2] == 0.0);
  CHECK(f[3] == 0.0);
  CHECK(f[0] == Approx(0.625).margin(0.03));  // 0.50 / 0.80 after renormalizing
  CHECK(f[1] == Approx(0.375).margin(0.03));
}

TEST_CASE("repetition penalty changes the choice", "[sampling]") {
  Sampler s(params(0.0f));
  SamplingParams p = params(0.0f);
  p.repeat_penalty = 1.5f;
  s.set_params(p);
  const std::vector<int> history{0};
  CHECK(s.sample(std::vector<float>{2.0f, 1.9f, 0.0f}, history) == 1);     // 2.0 / 1.5
  CHECK(s.sample(std::vector<float>{-1.0f, -1.2f, -9.0f}, history) == 1);  // -1.0 * 1.5
  CHECK(s.sample(std::vector<float>{2.0f, 1.9f, 0.0f}) == 0);              // no history

  // Only the last repeat_window tokens count.
  p.repeat_window = 2;
  s.set_params(p);
  CHECK(s.sample(std::vector<float>{2.0f, 1.9f, 0.0f}, std::vector<int>{0, 2, 2}) == 0);
  p.repeat_window = 0;
  s.set_params(p);
  CHECK(s.sample(std::vector<float>{2.0f, 1.9f, 0.0f}, std::vector<int>{0, 2, 2}) == 1);

  CHECK_THROWS_AS(s.sample(std::vector<float>{1.0f, 2.0f}, std::vector<int>{5}), mhla::Error);
}

TEST_CASE("sampling frequencies follow the tempered softmax", "[sampling]") {
  const std::vector<float> logits{1.0f, 2.0f, 3.0f, 0.5f, -1.0f};
  const double t = 0.7;
  std::vector<double> expected;
  double sum = 0.0;
  for (const float l : logits) sum += std::exp(l / t);
  for (const float l : logits) expected.push_back(std::exp(l / t) / sum);

  Sampler s(params(float(t), 2024));  // fixed seed: the outcome is the same on every run
  const auto f = histogram(s, logits, 20000);
  for (std::size_t i = 0; i < logits.size(); ++i) CHECK(f[i] == Approx(expected[i]).margin(0.015));
}

TEST_CASE("negative infinity logits are never sampled", "[sampling]") {
  const float ninf = -std::numeric_limits<float>::infinity();
  Sampler s(params(5.0f, 3));
  const auto f = histogram(s, std::vector<float>{ninf, 0.0f, ninf, 0.0f}, 1000);
  CHECK(f[0] == 0.0);
  CHECK(f[2] == 0.0);
}

TEST_CASE("invalid sampling parameters are rejected by name", "[sampling]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto rejects = [](SamplingParams p, const std::string& field) {
    CHECK_THROWS_WITH(p.validate(), Catch::Contains(field));
    CHECK_THROWS_AS(Sampler(p), mhla::Error);
  };
  SamplingParams p;
  p.temperature = -0.1f;
  rejects(p, "temperature");
  p.temperature = nan;
  rejects(p, "temperature");
  p = {};
  p.top_k = -1;
  rejects(p, "top_k");
  p = {};
  p.top_p = 0.0f;
  rejects(p, "top_p");
  p.top_p = 1.01f;
  rejects(p, "top_p");
  p = {};
  p.min_p = 1.0f;
  rejects(p, "min_p");
  p.min_p = -0.1f;
  rejects(p, "min_p");
  p = {};
  p.repeat_penalty = 0.0f;
  rejects(p, "repeat_penalty");
  p = {};
  p.repeat_window = -1;
  rejects(p, "repeat_window");

  Sampler s(SamplingParams{});
  p = {};
  p.top_p = 2.0f;
  CHECK_THROWS_AS(s.set_params(p), mhla::Error);
  CHECK(s.params().top_p == 1.0f);
}

TEST_CASE("unusable logits are rejected", "[sampling]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const float temperature : {0.0f, 1.0f}) {
    Sampler s(params(temperature));
    CHECK_THROWS_AS(s.sample(std::vector<float>{0.0f, nan, 1.0f}), mhla::Error);
    CHECK_THROWS_AS(s.sample(std::vector<float>{-inf, -inf}), mhla::Error);
    CHECK_THROWS_AS(s.sample(std::vector<float>{0.0f, inf}), mhla::Error);
    CHECK_THROWS_AS(s.sample(std::vector<float>{}), mhla::Error);
  }
}

namespace {

using mhla::StopChecker;
using mhla::StopCriteria;
using mhla::StopReason;

struct Run {
  std::string shown;
  StopReason reason = StopReason::none;
  int steps = 0;
};

// Feeds pieces (token id = position + 100) until the checker stops.
Run feed(StopChecker& checker, const std::vector<std::string>& pieces, const std::vector<int>& ids = {}) {
  Run run;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const auto step = checker.push(ids.empty() ? int(i) + 100 : ids[i], pieces[i]);
    run.shown += step.text;
    ++run.steps;
    if (step.reason != StopReason::none) {
      run.reason = step.reason;
      return run;
    }
  }
  run.shown += checker.finish();
  return run;
}

}  // namespace

TEST_CASE("stop strings split across pieces are never shown", "[sampling]") {
  StopCriteria c;
  c.stop_strings = {"\n\nUser:", "</s>"};
  const std::string text = "The answer is 42.\n\nUser: thanks";

  // Many random cuts of the text into pieces of 1 to 3 bytes.
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<std::string> pieces;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t len = std::min<std::size_t>(1 + rng() % 3, text.size() - at);
      pieces.push_back(text.substr(at, len));
      at += len;
    }
    StopChecker checker(c);
    std::string shown;
    StopReason reason = StopReason::none;
    for (std::size_t i = 0; i < pieces.size() && reason == StopReason::none; ++i) {
      const auto step = checker.push(int(i), pieces[i]);
      shown += step.text;
      reason = step.reason;
      CHECK(shown.find('\n') == std::string::npos);  // no part of the stop string leaks
    }
    CHECK(reason == StopReason::stop);
    CHECK(shown == "The answer is 42.");
  }
}

TEST_CASE("withheld text is released once it cannot start a stop string", "[sampling]") {
  StopCriteria c;
  c.stop_strings = {"STOP"};
  StopChecker checker(c);
  CHECK(checker.push(1, "abc ST").text == "abc ");
  CHECK(checker.push(2, "O").text.empty());
  const auto step = checker.push(3, "x!");
  CHECK(step.text == "STOx!");
  CHECK(step.reason == StopReason::none);
  CHECK(checker.push(4, "ST").text.empty());
  CHECK(checker.finish() == "ST");

  StopChecker other(c);
  CHECK(feed(other, {"no ", "S", "TOP", "more"}).shown == "no ");
  CHECK(other.reason() == StopReason::stop);
  CHECK_THROWS_AS(other.push(9, "late"), mhla::Error);
}

TEST_CASE("max_tokens ends generation with reason length", "[sampling]") {
  StopCriteria c;
  c.max_tokens = 3;
  c.stop_strings = {"zz"};
  StopChecker checker(c);
  const auto run = feed(checker, {"a", "b", "cz", "d"});
  CHECK(run.reason == StopReason::length);
  CHECK(run.steps == 3);
  CHECK(run.shown == "abcz");  // the withheld "z" is released when generation ends
  CHECK(checker.generated() == 3);
  CHECK(mhla::to_string(run.reason) == "length");
}

TEST_CASE("eos and stop ids end generation unless eos is ignored", "[sampling]") {
  StopCriteria c;
  c.eos_id = 2;
  c.stop_ids = {7};
  {
    StopChecker checker(c);
    const auto run = feed(checker, {"a", "b", "", "c"}, {5, 6, 2, 8});
    CHECK(run.reason == StopReason::stop);
    CHECK(run.steps == 3);
    CHECK(run.shown == "ab");
    CHECK(mhla::to_string(run.reason) == "stop");
  }
  {
    StopChecker checker(c);
    const auto run = feed(checker, {"a", "<x>", "c"}, {5, 7, 8});
    CHECK(run.reason == StopReason::stop);
    CHECK(run.shown == "a");  // a stop token's own text is not shown
  }
  c.ignore_eos = true;
  {
    StopChecker checker(c);
    const auto run = feed(checker, {"a", "b", "", "c"}, {5, 6, 2, 8});
    CHECK(run.reason == StopReason::none);
    CHECK(run.shown == "abc");
  }
}

TEST_CASE("invalid stop criteria are rejected", "[sampling]") {
  StopCriteria c;
  c.stop_strings = {"ok", ""};
  CHECK_THROWS_AS(StopChecker(c), mhla::Error);
  c.stop_strings = {};
  c.max_tokens = -1;
  CHECK_THROWS_WITH(StopChecker(c), Catch::Contains("max_tokens"));
}

TEST_CASE("draw takes from the generator what sample takes, and the penalty's ids", "[sampling]") {
  const auto logits = random_logits(50, 3);
  SamplingParams p = params(0.8f, 21);
  p.repeat_penalty = 1.3f;
  p.repeat_window = 4;
  Sampler a(p), b(p);
  const std::vector<int> history{9, 2, 7, 2, 40, 7};
  for (int i = 0; i < 5; ++i) {
    const Sampler::Draw d = a.draw(history, 50);
    CHECK(d.penalized == std::vector<int>{2, 7, 40});  // the last 4, distinct, ascending
    CHECK(d.uniform >= 0.0);
    CHECK(d.uniform < 1.0);
    b.sample(logits, history);
  }
  CHECK(a.sample(logits, history) == b.sample(logits, history));
  CHECK(a.save_rng() == b.save_rng());

  // Greedy takes no random number; a penalty of 1 applies to nothing.
  SamplingParams g = params(0.0f, 21);
  Sampler c(g), d(g);
  const Sampler::Draw none = c.draw(history, 50);
  CHECK(none.uniform == 0.0);
  CHECK(none.penalized.empty());
  CHECK(c.save_rng() == d.save_rng());

  CHECK_THROWS_WITH(a.draw(std::vector<int>{3, 50}, 50),
                    Catch::Contains("history token 50 is outside the vocabulary of 50"));
}
