#pragma once
// Owning device memory. Plain cudaMalloc (never managed memory).
#include <cstddef>
#include <utility>

#include "cuda/check.hpp"

namespace mhla::cuda {

template <class T>
class DeviceBuffer {
public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) { resize(count); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), count_(std::exchange(o.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(count_, o.count_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }

  // Grows to at least `count` elements; contents are not kept.
  void resize(size_t count) {
    if (count <= count_) return;
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
    MHLA_CUDA_CHECK(cudaMalloc(&ptr_, count * sizeof(T)));
    count_ = count;
  }
  T* data() const { return ptr_; }
  size_t size() const { return count_; }

private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace mhla::cuda
