#pragma once
// Device copies of host vectors for the GPU tests, with guard zones after the data: a kernel
// that writes past the end changes the guard and the test says so; host floats rounded as a
// storage type would round them, and tolerances carried from bf16 to fp16.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/host_cast.hpp"
#include "support/reference.hpp"

namespace mhla::test {

constexpr size_t kGuard = 1024;
constexpr float kSentinel = -12345.0f;

template <class T>
class Device {
public:
  explicit Device(size_t n) : n_(n) {
    if (cudaMalloc(&p_, (n + kGuard) * sizeof(T)) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  Device(Device&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(o.n_) {}
  ~Device() {
    if (p_) cudaFree(p_);
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

private:
  T* p_ = nullptr;
  size_t n_;
};

// fp32, bf16 or fp16 device copy of host floats.
template <class T>
Device<T> to_device(const std::vector<float>& x) {
  Device<T> d(x.size());
  std::vector<T> h(x.size());
  std::transform(x.begin(), x.end(), h.begin(), cuda::host_cast<T>);
  cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

// An output buffer filled with NaN (unwritten elements stay NaN) and sentinel guards.
inline Device<float> poisoned_output(size_t n) {
  Device<float> d(n);
  std::vector<float> h(n + kGuard, std::nanf(""));
  for (size_t i = n; i < n + kGuard; ++i) h[i] = kSentinel;
  cudaMemcpy(d.get(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
  return d;
}

// The output's values; throws if a guard changed.
inline std::vector<float> from_device(const Device<float>& d) {
  std::vector<float> h(d.size() + kGuard);
  if (cudaMemcpy(h.data(), d.get(), h.size() * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess)
    throw std::runtime_error("cudaMemcpy failed");
  for (size_t i = d.size(); i < h.size(); ++i)
    if (h[i] != kSentinel) throw std::runtime_error("a kernel wrote past the end of its output");
  h.resize(d.size());
  return h;
}

// Rounds host floats as T would, for references of runs in T.
template <class T>
std::vector<float> round_to(std::vector<float> x) {
  for (auto& e : x) e = cuda::host_float(cuda::host_cast<T>(e));
  return x;
}

template <class T>
CausalInputs round_to(CausalInputs in) {
  in.q = round_to<T>(std::move(in.q));
  in.k = round_to<T>(std::move(in.k));
  in.v = round_to<T>(std::move(in.v));
  return in;
}

// fp16 keeps 11 significant bits to bf16's 8: its rounding errors are an eighth of bf16's, and
// so are the tolerances the tests derive for bf16 from them.
template <class T>
constexpr double tolerance_16(double bf16) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
  return std::is_same_v<T, __half> ? bf16 / 8 : bf16;
}

}  // namespace mhla::test
