#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "mhla/error.hpp"
#include "mhla/mixing.hpp"

using namespace mhla;

TEST_CASE("learned mixing is clamped to [1e-5, 1] and made lower triangular", "[mixing]") {
  const std::vector<float> m = {-3.0f, 0.5f, 2.0f, 0.25f};
  const auto w = MixingWeights::from_learned(m, 2);
  CHECK(w.at(0, 0) == 1e-5f);
  CHECK(w.at(0, 1) == 0.0f);
  CHECK(w.at(1, 0) == 1.0f);
  CHECK(w.at(1, 1) == 0.25f);
}

TEST_CASE("learned mixing refuses NaN, infinity and the wrong size", "[mixing]") {
  std::vector<float> m(9, 0.5f);
  m[4] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(MixingWeights::from_learned(m, 3), Catch::Contains("[1][1]"));
  m[4] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(MixingWeights::from_learned(m, 3), Error);
  CHECK_THROWS_WITH(MixingWeights::from_learned(std::vector<float>(8, 0.5f), 3), Catch::Contains("3x3"));
  CHECK_THROWS_AS(MixingWeights::from_learned({}, 0), Error);
}

TEST_CASE("locality initialization favours near blocks and rows sum to one", "[mixing]") {
  const auto w = MixingWeights::locality_init(6);
  for (int i = 0; i < 6; ++i) {
    double sum = 0;
    for (int j = 0; j <= i; ++j) sum += w.at(i, j);
    CHECK(sum == Approx(1.0));
    for (int j = 1; j <= i; ++j) CHECK(w.at(i, j) > w.at(i, j - 1));
    CHECK(w.at(i, 0) > 0.0f);
  }
  CHECK(w.at(0, 0) == 1.0f);
}

TEST_CASE("harmonic initialization is 1/(i+1)", "[mixing]") {
  const auto w = MixingWeights::harmonic_init(4);
  CHECK(w.at(3, 0) == 0.25f);
  CHECK(w.at(3, 3) == 0.25f);
  CHECK(w.at(1, 0) == 0.5f);
  CHECK(w.at(0, 1) == 0.0f);
}

TEST_CASE("grid distance mixing: columns sum to one, the own block weighs most", "[mixing]") {
  const auto w = grid_distance_mixing({8, 12, 4});  // 2 x 3 blocks
  const int m = 6;
  REQUIRE(w.size() == 36u);
  for (int j = 0; j < m; ++j) {
    double col = 0;
    for (int i = 0; i < m; ++i) col += w[i * m + j];
    CHECK(col == Approx(1.0));
    for (int i = 0; i < m; ++i) CHECK(w[j * m + j] >= w[i * m + j]);
  }
  CHECK_THROWS_AS(grid_distance_mixing({8, 10, 4}), Error);
}
