#pragma once
// What the CUDA benchmarks share: wall-clock medians of device work (the caller synchronizes,
// so launches count), random bf16 device buffers, and the ceilings measured in the same run
// that floors are computed from: a device-to-device copy (bytes read + written per second) and
// a large bf16 matrix product on random data.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace mhla::bench {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class F>
double median_wall_ms(F&& f, int warmup, int reps) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

inline __nv_bfloat16* random_bf16(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<__nv_bfloat16> h(n);
  for (auto& x : h) x = __float2bfloat16(u(rng));
  __nv_bfloat16* d = nullptr;
  check(cudaMalloc(&d, n * sizeof(__nv_bfloat16)), "cudaMalloc");
  check(cudaMemcpy(d, h.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice), "cudaMemcpy");
  return d;
}

struct Ceilings {
  double bytes_per_s = 0;  // read + written
  double flops = 0;        // bf16 products
};

inline Ceilings measure_ceilings() {
  Ceilings c;
  const size_t n = size_t{1} << 30;  // bf16 elements: 2 GiB copied
  __nv_bfloat16* a = random_bf16(n, 1);
  __nv_bfloat16* b = nullptr;
  check(cudaMalloc(&b, n * sizeof(__nv_bfloat16)), "cudaMalloc");
  const double copy_ms = median_wall_ms(
      [&] {
        check(cudaMemcpy(b, a, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice), "cudaMemcpy");
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      },
      2, 7);
  c.bytes_per_s = 2.0 * n * sizeof(__nv_bfloat16) / (copy_ms * 1e-3);
  cublasHandle_t blas;
  cublasCreate(&blas);
  const int m = 8192;
  const float one = 1, zero = 0;
  __nv_bfloat16 *A = a, *B = a + size_t{m} * m, *C = b;  // random operands, within the copy buffers
  const double gemm_ms = median_wall_ms(
      [&] {
        cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, m, m, m, &one, A, CUDA_R_16BF, m, B, CUDA_R_16BF, m, &zero, C,
                     CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
      },
      2, 7);
  c.flops = 2.0 * m * m * double(m) / (gemm_ms * 1e-3);
  cublasDestroy(blas);
  cudaFree(a);
  cudaFree(b);
  return c;
}

}  // namespace mhla::bench
