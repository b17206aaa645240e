#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <limits>
#include <locale>
#include <sstream>
#include <utility>

#include "mhla/error.hpp"
#include "mhla/sampling.hpp"

namespace mhla {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f && std::isfinite(temperature)))
    throw Error(fmt::format("sampling: temperature must be finite and >= 0, got {}", temperature));
  if (top_k < 0) throw Error(fmt::format("sampling: top_k must be >= 0 (0 = off), got {}", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f))
    throw Error(fmt::format("sampling: top_p must be in (0, 1], got {}", top_p));
  if (!(min_p >= 0.0f && min_p < 1.0f))
    throw Error(fmt::format("sampling: min_p must be in [0, 1), got {}", min_p));
  if (!(repeat_penalty > 0.0f && std::isfinite(repeat_penalty)))
    throw Error(fmt::format("sampling: repeat_penalty must be finite and > 0, got {}", repeat_penalty));
  if (repeat_window < 0)
    throw Error(fmt::format("sampling: repeat_window must be >= 0 (0 = all), got {}", repeat_window));
}

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr std::string_view kRngTag = "mt19937_64";

void check_logits(std::span<const float> logits) {
  if (logits.empty()) throw Error("sampling: no logits");
  bool any = false;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const float x = logits[i];
    if (std::isnan(x) || (std::isinf(x) && x > 0.0f))
      throw Error(fmt::format("sampling: logit of token {} is {}", i, x));
    any = any || x != kNegInf;
  }
  if (!any) throw Error("sampling: every logit is -inf");
}

// The distinct tokens of the window: each is penalized once, however often it occurred.
std::vector<int> penalized_ids(std::span<const int> history, const SamplingParams& p, std::size_t vocab) {
  if (p.repeat_penalty == 1.0f || history.empty()) return {};
  const std::size_t window =
      p.repeat_window == 0 ? history.size() : std::min(history.size(), std::size_t(p.repeat_window));
  std::vector<int> seen(history.end() - std::ptrdiff_t(window), history.end());
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  for (const int id : seen)
    if (id < 0 || std::size_t(id) >= vocab)
      throw Error(fmt::format("sampling: history token {} is outside the vocabulary of {}", id, vocab));
  return seen;
}

int argmax(const std::vector<float>& logits) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return int(best);
}

struct Candidate {
  int id;
  double p;  // unnormalized probability
};

// Ids with a finite logit, cut to the top_k largest (ties: lower id first), ascending id.
std::vector<int> top_k_ids(const std::vector<float>& logits, int top_k) {
  std::vector<int> ids;
  for (std::size_t i = 0; i < logits.size(); ++i)
    if (logits[i] != kNegInf) ids.push_back(int(i));
  if (top_k > 0 && std::size_t(top_k) < ids.size()) {
    const auto better = [&](int a, int b) {
      return logits[std::size_t(a)] > logits[std::size_t(b)] ||
             (logits[std::size_t(a)] == logits[std::size_t(b)] && a < b);
    };
    std::nth_element(ids.begin(), ids.begin() + top_k, ids.end(), better);
    ids.resize(std::size_t(top_k));
    std::sort(ids.begin(), ids.end());
  }
  return ids;
}

std::vector<Candidate> softmax(const std::vector<float>& logits, const std::vector<int>& ids,
                               double temperature) {
  double max = -std::numeric_limits<double>::infinity();
  for (const int id : ids) max = std::max(max, double(logits[std::size_t(id)]));
  std::vector<Candidate> out;
  out.reserve(ids.size());
  for (const int id : ids) out.push_back({id, std::exp((double(logits[std::size_t(id)]) - max) / temperature)});
  return out;
}

double total(const std::vector<Candidate>& c) {
  double sum = 0.0;
  for (const auto& x : c) sum += x.p;
  return sum;
}

void apply_top_p(std::vector<Candidate>& c, double top_p) {
  std::vector<std::size_t> order(c.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return c[a].p > c[b].p || (c[a].p == c[b].p && c[a].id < c[b].id);
  });
  const double target = top_p * total(c);
  std::vector<bool> keep(c.size(), false);
  double cum = 0.0;
  for (const std::size_t i : order) {
    keep[i] = true;
    cum += c[i].p;
    if (cum >= target) break;
  }
  std::size_t n = 0;
  for (std::size_t i = 0; i < c.size(); ++i)
    if (keep[i]) c[n++] = c[i];
  c.resize(n);
}

void apply_min_p(std::vector<Candidate>& c, double min_p) {
  double max = 0.0;
  for (const auto& x : c) max = std::max(max, x.p);
  const double floor = min_p * max;
  std::erase_if(c, [&](const Candidate& x) { return x.p < floor; });
}

}  // namespace

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) { params_.validate(); }

void Sampler::set_params(SamplingParams params) {
  params.validate();
  params_ = params;
}

void Sampler::reseed(std::uint64_t seed) {
  params_.seed = seed;
  rng_.seed(seed);
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

int Sampler::sample(std::span<const float> logits, std::span<const int> history) {
  check_logits(logits);
  const Draw d = draw(history, int(logits.size()));  // as sampling on a device takes it
  std::vector<float> l(logits.begin(), logits.end());
  for (const int id : d.penalized) {
    float& x = l[std::size_t(id)];
    x = x > 0.0f ? x / params_.repeat_penalty : x * params_.repeat_penalty;
  }
  if (params_.temperature == 0.0f) return argmax(l);

  auto cands = softmax(l, top_k_ids(l, params_.top_k), double(params_.temperature));
  if (params_.top_p < 1.0f) apply_top_p(cands, double(params_.top_p));
  if (params_.min_p > 0.0f) apply_min_p(cands, double(params_.min_p));

  const double u = d.uniform * total(cands);
  double cum = 0.0;
  for (const auto& c : cands) {
    cum += c.p;
    if (u < cum) return c.id;
  }
  return cands.back().id;  // u fell past the last partial sum through rounding
}

Sampler::Draw Sampler::draw(std::span<const int> history, int vocab) {
  Draw d;
  d.penalized = penalized_ids(history, params_, std::size_t(std::max(vocab, 0)));
  if (params_.temperature != 0.0f) d.uniform = uniform();
  return d;
}

// The classic locale keeps the digits free of grouping marks whatever the global locale is.
std::string Sampler::save_rng() const {
  std::ostringstream out;
  out.imbue(std::locale::classic());
  out << kRngTag << ' ' << rng_;
  return out.str();
}

void Sampler::load_rng(const std::string& state) {
  std::istringstream in(state);
  in.imbue(std::locale::classic());
  std::string tag;
  std::mt19937_64 rng;
  in >> tag;
  if (tag != kRngTag) throw Error(fmt::format("sampler state must start with '{}'", kRngTag));
  in >> rng;
  if (in.fail()) throw Error("sampler state is malformed");
  in >> std::ws;
  if (!in.eof()) throw Error("sampler state has trailing data");
  rng_ = rng;
}

void StopCriteria::validate() const {
  if (max_tokens < 0) throw Error(fmt::format("max_tokens must be >= 0 (0 = no limit), got {}", max_tokens));
  for (std::size_t i = 0; i < stop_strings.size(); ++i)
    if (stop_strings[i].empty()) throw Error(fmt::format("stop string {} is empty", i));
}

std::string_view to_string(StopReason reason) {
  switch (reason) {
    case StopReason::none: return "";
    case StopReason::stop: return "stop";
    case StopReason::length: return "length";
  }
  return "?";
}

StopChecker::StopChecker(StopCriteria criteria) : criteria_(std::move(criteria)) { criteria_.validate(); }

StopStep StopChecker::push(int id, std::string_view piece) {
  if (reason_ != StopReason::none) throw Error("generation has already stopped");
  ++generated_;
  const bool eos = !criteria_.ignore_eos && criteria_.eos_id >= 0 && id == criteria_.eos_id;
  if (eos || std::ranges::find(criteria_.stop_ids, id) != criteria_.stop_ids.end())
    return stop(StopReason::stop, pending_.size());

  pending_ += piece;
  std::size_t first = std::string::npos;
  for (const auto& s : criteria_.stop_strings) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) return stop(StopReason::stop, first);
  if (criteria_.max_tokens > 0 && generated_ >= criteria_.max_tokens)
    return stop(StopReason::length, pending_.size());

  const std::size_t keep = pending_.size() - held_suffix();
  StopStep step{pending_.substr(0, keep), StopReason::none};
  pending_.erase(0, keep);
  return step;
}

std::string StopChecker::finish() { return std::exchange(pending_, {}); }

StopStep StopChecker::stop(StopReason reason, std::size_t keep) {
  reason_ = reason;
  StopStep step{pending_.substr(0, keep), reason};
  pending_.clear();
  return step;
}

// A suffix that is a proper prefix of a stop string starts on a character boundary (stop
// strings are whole UTF-8), so the released part never ends inside a character.
std::size_t StopChecker::held_suffix() const {
  const std::string_view text = pending_;
  std::size_t held = 0;
  for (const std::string_view s : criteria_.stop_strings) {
    for (std::size_t len = std::min(s.size() - 1, text.size()); len > held; --len) {
      if (text.ends_with(s.substr(0, len))) {
        held = len;
        break;
      }
    }
  }
  return held;
}

}  // namespace mhla
