// The strict policy refuses the first token past the trained window and leaves the state as it
// was; the slide policies keep the state bounded; switching strict -> slide continues exactly.
#include <catch2/catch.hpp>

#include "mhla/error.hpp"
#include "support/reference.hpp"

using namespace mhla;

namespace {
CausalOptions small_options(ContextPolicy policy) {
  CausalOptions opt;
  opt.layout = {2, 1, 4, 4};
  opt.block_size = 4;
  opt.policy = policy;
  return opt;
}
}  // namespace

TEST_CASE("strict refuses past the window, naming the window and the position", "[causal][policy]") {
  const CausalOperator op(small_options(ContextPolicy::strict), MixingWeights::harmonic_init(3));
  std::mt19937_64 rng(1);
  const auto in = test::random_inputs(rng, op.options().layout, 13);
  std::vector<float> o(13 * 2 * 4);
  CausalState s = op.new_state();
  op.prefill(s, in.q.data(), in.k.data(), in.v.data(), 10, o.data());
  const auto before = s.kv_data();
  try {
    op.prefill(s, in.q.data(), in.k.data(), in.v.data(), 3, o.data());
    FAIL("expected a refusal");
  } catch (const RefusedError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("12") != std::string::npos);  // the first position refused
    CHECK(msg.find("window of 12 tokens") != std::string::npos);
  }
  CHECK(s.position() == 10);
  CHECK(s.kv_data() == before);
  op.prefill(s, in.q.data(), in.k.data(), in.v.data(), 2, o.data());  // exactly up to the window
  CHECK(s.position() == 12);
  CHECK_THROWS_AS(op.decode(s, in.q.data(), in.k.data(), in.v.data(), 1, o.data()), RefusedError);
}

TEST_CASE("a strict state continues under a slide policy exactly as slide from the start", "[causal][policy]") {
  const auto mixing = MixingWeights::locality_init(3);
  const CausalOperator strict(small_options(ContextPolicy::strict), mixing);
  const CausalOperator slide(small_options(ContextPolicy::slide_mean), mixing);
  std::mt19937_64 rng(2);
  const long long T = 30;
  const auto in = test::random_inputs(rng, strict.options().layout, T);
  std::vector<float> o1(T * 8), o2(T * 8);
  CausalState a = strict.new_state(), b = slide.new_state();
  strict.prefill(a, in.q.data(), in.k.data(), in.v.data(), 12, o1.data());
  slide.prefill(a, in.q.data() + 12 * 8, in.k.data() + 12 * 4, in.v.data() + 12 * 4, T - 12, o1.data() + 12 * 8);
  slide.prefill(b, in.q.data(), in.k.data(), in.v.data(), T, o2.data());
  CHECK(o1 == o2);
}

TEST_CASE("slide policies keep the state bounded", "[causal][policy]") {
  const CausalOperator op(small_options(ContextPolicy::slide), MixingWeights::harmonic_init(5));
  std::mt19937_64 rng(3);
  const long long T = 200;
  const auto in = test::random_inputs(rng, op.options().layout, T);
  std::vector<float> o(T * 8);
  CausalState s = op.new_state();
  op.prefill(s, in.q.data(), in.k.data(), in.v.data(), T, o.data(), 16);
  CHECK(s.recent_count() == 3);  // L - 2
  CHECK(s.tail_blocks() == T / 4 - 1 - 3);
  CHECK(s.byte_size() == s.max_byte_size());
  CHECK(s.max_byte_size() == (3 + 3) * 1 * 4 * 4 * sizeof(float));
}

TEST_CASE("block weights follow the slide rules", "[mixing][policy]") {
  const auto w = MixingWeights::harmonic_init(4);  // row 3: 1/4 each
  const auto row = block_row_weights(w, ContextPolicy::slide_mean, 10, 8);
  CHECK(row.diagonal == Approx(0.25));
  REQUIRE(row.by_distance.size() == 2);
  CHECK(row.tail == Approx(0.25 / 8));  // n = i - L + 2 = 8 older blocks share W[L-1][0]
  CHECK(effective_weight(w, ContextPolicy::slide, 10, 0) == Approx(0.25));
  CHECK(effective_weight(w, ContextPolicy::slide_mean, 10, 0) == Approx(0.25 / 8));
  CHECK_THROWS_AS(block_row_weights(w, ContextPolicy::strict, 4, 0), RefusedError);
}
