// The host's fp16 conversion (cuda/host_cast.hpp), which writes the fp16 weights and tables a
// GPU run copies to the device: every fp16 value round-trips exactly, ties round to even,
// values past the range become infinities, subnormals keep their spacing, NaN stays NaN.
// Checked on the host, so it runs where no GPU is; it needs the CUDA headers only.
#ifdef MHLA_HAVE_CUDA
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda/host_cast.hpp"

using mhla::cuda::host_cast;
using mhla::cuda::host_float;

namespace {

uint16_t bits(__half h) { return static_cast<__half_raw>(h).x; }

__half from_bits(uint16_t b) {
  __half_raw r;
  r.x = b;
  return r;
}

float to_half_and_back(float x) { return host_float(host_cast<__half>(x)); }

}  // namespace

TEST_CASE("host fp16: every fp16 value converts to float and back exactly", "[half]") {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const __half h = from_bits(static_cast<uint16_t>(b));
    const float x = host_float(h);
    const bool nan = (b & 0x7c00) == 0x7c00 && (b & 0x03ff) != 0;
    INFO("bits " << b);
    CHECK(std::isnan(x) == nan);
    if (!nan) CHECK(bits(host_cast<__half>(x)) == b);  // also +-0 and +-inf, sign kept
  }
}

TEST_CASE("host fp16: rounds to nearest, ties to even", "[half]") {
  const float ulp1 = std::ldexp(1.0f, -10);  // the spacing of fp16 in [1, 2)
  CHECK(to_half_and_back(1.0f + ulp1 / 2) == 1.0f);                  // tie: down to the even 1
  CHECK(to_half_and_back(1.0f + 3 * ulp1 / 2) == 1.0f + 2 * ulp1);   // tie: up to the even 1 + 2 ulp
  CHECK(to_half_and_back(-(1.0f + ulp1 / 2)) == -1.0f);
  CHECK(to_half_and_back(1.0f + ulp1 / 2 + ulp1 / 1024) == 1.0f + ulp1);  // past the tie: up
  CHECK(to_half_and_back(1.0f + ulp1 / 2 - ulp1 / 1024) == 1.0f);         // short of it: down
  CHECK(to_half_and_back(2049.0f) == 2048.0f);  // spacing 2 in [2048, 4096): a tie, to even
  CHECK(to_half_and_back(2051.0f) == 2052.0f);
  CHECK(to_half_and_back(0.1f) == host_float(from_bits(0x2e66)));  // 0.0999755859375
}

TEST_CASE("host fp16: past the largest value, infinity", "[half]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(to_half_and_back(65504.0f) == 65504.0f);  // the largest fp16
  CHECK(to_half_and_back(65519.0f) == 65504.0f);  // below the midpoint to 65536
  CHECK(to_half_and_back(65520.0f) == inf);       // the midpoint, a tie to the even 2^16: infinity
  CHECK(to_half_and_back(1e6f) == inf);
  CHECK(to_half_and_back(-1e6f) == -inf);
  CHECK(to_half_and_back(std::numeric_limits<float>::max()) == inf);
  CHECK(to_half_and_back(inf) == inf);
  CHECK(to_half_and_back(-inf) == -inf);
}

TEST_CASE("host fp16: subnormals and underflow", "[half]") {
  const float tiny = std::ldexp(1.0f, -24);  // the smallest subnormal fp16
  CHECK(to_half_and_back(tiny) == tiny);
  CHECK(to_half_and_back(std::ldexp(1.0f, -14)) == std::ldexp(1.0f, -14));  // the smallest normal
  CHECK(to_half_and_back(std::ldexp(1.0f, -14) - tiny) == std::ldexp(1.0f, -14) - tiny);  // the largest subnormal
  CHECK(to_half_and_back(1000 * tiny) == 1000 * tiny);
  CHECK(to_half_and_back(1000.4f * tiny) == 1000 * tiny);
  CHECK(to_half_and_back(1000.6f * tiny) == 1001 * tiny);
  CHECK(to_half_and_back(2.5f * tiny) == 2 * tiny);  // tie: to even
  CHECK(to_half_and_back(3.5f * tiny) == 4 * tiny);
  CHECK(to_half_and_back(tiny / 2) == 0.0f);  // tie between 0 and the smallest: to 0
  CHECK(to_half_and_back(0.75f * tiny) == tiny);
  CHECK(to_half_and_back(0.25f * tiny) == 0.0f);
  CHECK(std::signbit(to_half_and_back(-0.25f * tiny)));  // underflows to -0
  CHECK(std::signbit(to_half_and_back(-0.0f)));
}

TEST_CASE("host fp16: NaN stays NaN", "[half]") {
  CHECK(std::isnan(to_half_and_back(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(to_half_and_back(-std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isnan(to_half_and_back(std::numeric_limits<float>::signaling_NaN())));
}
#endif
