#include <catch2/catch.hpp>

#include "mhla/causal.hpp"
#include "mhla/error.hpp"
#include "support/reference.hpp"

using namespace mhla;
using mhla::test::relative_error;

TEST_CASE("non-causal 1-D blocks match the float64 reference", "[noncausal]") {
  std::mt19937_64 rng(5);
  for (auto fm : {FeatureMap::relu, FeatureMap::elu1, FeatureMap::relu_eps})
    for (bool rotary : {false, true})
      for (HeadLayout layout : {HeadLayout{2, 2, 6, 4}, HeadLayout{4, 2, 4, 5}}) {
        NonCausalOptions opt;
        opt.layout = layout;
        opt.block_size = 5;
        opt.feature_map = fm;
        opt.rotary = rotary;
        const long long T = 20;
        const auto in = test::random_inputs(rng, layout, T);
        const auto mixing = test::random_vector(rng, 16, 0.0f, 1.0f);
        std::vector<float> o(T * layout.heads * layout.dv);
        noncausal_forward(opt, mixing, in.q.data(), in.k.data(), in.v.data(), T, o.data());
        INFO(to_string(fm) << " rotary=" << rotary << " H=" << layout.heads);
        CHECK(relative_error(o, test::reference_noncausal(opt, mixing, in.q, in.k, in.v, T)) <= 1e-5);
      }
}

TEST_CASE("non-causal windows over a grid match the float64 reference", "[noncausal]") {
  std::mt19937_64 rng(6);
  NonCausalOptions opt;
  opt.layout = {2, 1, 8, 4};
  opt.grid = WindowGrid{6, 9, 3};
  const long long T = 54;
  const auto in = test::random_inputs(rng, opt.layout, T);
  const auto mixing = grid_distance_mixing(*opt.grid);
  std::vector<float> o(T * 2 * 4);
  noncausal_forward(opt, mixing, in.q.data(), in.k.data(), in.v.data(), T, o.data());
  CHECK(relative_error(o, test::reference_noncausal(opt, mixing, in.q, in.k, in.v, T)) <= 1e-5);
  CHECK(opt.block_of(0) == 0);
  CHECK(opt.block_of(3) == 1);
  CHECK(opt.block_of(9 * 3) == 3);
}

TEST_CASE("non-causal refuses shapes that do not split into blocks", "[noncausal]") {
  NonCausalOptions opt;
  opt.layout = {1, 1, 4, 4};
  opt.block_size = 4;
  std::vector<float> x(10 * 4, 0.5f), o(10 * 4), m(4, 0.5f);
  CHECK_THROWS_WITH(noncausal_forward(opt, m, x.data(), x.data(), x.data(), 10, o.data()),
                    Catch::Contains("multiple of the block size"));
  CHECK_THROWS_WITH(noncausal_forward(opt, std::vector<float>(3, 0.5f), x.data(), x.data(), x.data(), 8, o.data()),
                    Catch::Contains("2x2"));
  opt.grid = WindowGrid{4, 6, 4};
  CHECK_THROWS_WITH(noncausal_forward(opt, m, x.data(), x.data(), x.data(), 24, o.data()),
                    Catch::Contains("whole 4x4 windows"));
  opt.grid.reset();
  opt.feature_map = FeatureMap::identity;
  CHECK_THROWS_WITH(noncausal_forward(opt, m, x.data(), x.data(), x.data(), 8, o.data()),
                    Catch::Contains("non-negative feature map"));
}
