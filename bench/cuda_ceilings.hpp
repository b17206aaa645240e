#pragma once
// What the CUDA benchmarks share: wall-clock medians of device work (the caller synchronizes,
// so launches count), random bf16 or fp16 device buffers, the 16-bit type a run measures, and
// the ceilings measured in the same run that floors are computed from: a device-to-device copy
// (bytes read + written per second) and a large bf16 matrix product on random data (fp16's
// tensor-core rate is the same on these GPUs).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
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

// n values from [-1, 1] on the device, in T (__nv_bfloat16 or __half).
template <class T>
T* random_device(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> h(n);
  for (auto& x : h) {
    if constexpr (std::is_same_v<T, __half>)
      x = __float2half(u(rng));
    else
      x = __float2bfloat16(u(rng));
  }
  T* d = nullptr;
  check(cudaMalloc(&d, n * sizeof(T)), "cudaMalloc");
  check(cudaMemcpy(d, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  return d;
}

// The 16-bit type a run measures: MHLA_BENCH_PRECISION, bf16 (the default) or f16. True for f16.
inline bool bench_f16() {
  const char* env = std::getenv("MHLA_BENCH_PRECISION");
  const std::string name = env ? env : "bf16";
  if (name != "bf16" && name != "f16")
    throw std::runtime_error("MHLA_BENCH_PRECISION must be bf16 or f16, got '" + name + "'");
  return name == "f16";
}

// n values from [-1, 1] on the device, in fp16 when `f16`, else in bf16.
inline void* random_16bit(size_t n, unsigned seed, bool f16) {
  if (f16) return random_device<__half>(n, seed);
  return random_device<__nv_bfloat16>(n, seed);
}

struct Ceilings {
  double bytes_per_s = 0;  // read + written
  double flops = 0;        // bf16 products
};

inline Ceilings measure_ceilings() {
  Ceilings c;
  const size_t n = size_t{1} << 30;  // bf16 elements: 2 GiB copied
  __nv_bfloat16* a = random_device<__nv_bfloat16>(n, 1);
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
