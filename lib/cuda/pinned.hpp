#pragma once
// Pinned host memory. PinnedStep: a host staging buffer in pinned memory with its device twin: the small per-step tables of
// the decode step travel in one asynchronous copy, without the stream synchronization a copy
// from pageable memory implies. The host side is reused only after the previous copy ends.
// Its addresses change only when it grows.
#include <cstddef>

#include "cuda/buffer.hpp"
#include "cuda/check.hpp"

namespace mhla::cuda {

class PinnedStep {
public:
  PinnedStep() = default;
  PinnedStep(const PinnedStep&) = delete;
  PinnedStep& operator=(const PinnedStep&) = delete;
  ~PinnedStep() {
    if (host_) cudaFreeHost(host_);
    if (done_) cudaEventDestroy(done_);
  }

  // Host memory of at least `bytes`, free to write.
  char* host(size_t bytes) {
    if (done_) MHLA_CUDA_CHECK(cudaEventSynchronize(done_));
    if (bytes > capacity_) {
      if (host_) cudaFreeHost(host_);
      host_ = nullptr;
      capacity_ = 0;
      MHLA_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host_), bytes, cudaHostAllocDefault));
      capacity_ = bytes;
      device_.resize(bytes);
    }
    return host_;
  }
  // Copies the first `bytes` to the device on `stream`; returns the device copy.
  char* send(size_t bytes, cudaStream_t stream) {
    if (!done_) MHLA_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    MHLA_CUDA_CHECK(cudaMemcpyAsync(device_.data(), host_, bytes, cudaMemcpyHostToDevice, stream));
    // Inside a graph capture the copy runs at each replay; the replaying caller synchronizes.
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    MHLA_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
    if (capturing == cudaStreamCaptureStatusNone) MHLA_CUDA_CHECK(cudaEventRecord(done_, stream));
    return device_.data();
  }

private:
  char* host_ = nullptr;
  size_t capacity_ = 0;
  DeviceBuffer<char> device_;
  cudaEvent_t done_ = nullptr;
};

// Page-locked host memory for n elements: device-to-host copies into it run at full speed
// and without staging.
template <class T>
class PinnedArray {
public:
  explicit PinnedArray(size_t n) { MHLA_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&p_), n * sizeof(T), 0)); }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() { cudaFreeHost(p_); }
  T* data() const { return p_; }

private:
  T* p_ = nullptr;
};

}  // namespace mhla::cuda
