// The GPU test binary: without a CUDA device every run is reported as skipped (exit 77), except
// listing, which ctest's test discovery needs on any machine.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string_view>

#include "mhla/cuda.hpp"

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing = listing || std::string_view(argv[i]).rfind("--list", 0) == 0;
  if (!listing && mhla::cuda::device_count() == 0) {
    std::puts("skipped: no GPU");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
