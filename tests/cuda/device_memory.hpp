#pragma once
// Device copies of host vectors for the GPU tests, with guard zones after the data: a kernel
// that writes past the end changes the guard and the test says so.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <utility>
#include <vector>

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

// fp32 or bf16 device copy of host floats.
template <class T>
Device<T> to_device(const std::vector<float>& x) {
  Device<T> d(x.size());
  std::vector<T> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if constexpr (std::is_same_v<T, float>)
      h[i] = x[i];
    else
      h[i] = __float2bfloat16(x[i]);
  }
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

// Rounds host floats as bf16 would, for references of bf16 runs.
inline std::vector<float> round_bf16(std::vector<float> x) {
  for (auto& e : x) e = __bfloat162float(__float2bfloat16(e));
  return x;
}

}  // namespace mhla::test
