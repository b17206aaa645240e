#pragma once
// The host side of sampling on the device for a forward call: each sampling step's draw taken
// from its Sampler before anything runs, the rows sampled where the model left their logits,
// and the ids (or the Sampler's error) handed back.
#include <span>
#include <vector>

#include "cuda/pinned.hpp"
#include "cuda/sampling.cuh"
#include "mhla/device.hpp"

namespace mhla::cuda {

class RowSampler {
public:
  RowSampler(int vocab, int max_rows);

  // Draws for every step of `batch` that samples and sends the draws to the device; `rows[i]` is
  // the row of its logits buffer where batch[i]'s last logits will be. Throws mhla::Error
  // (every sampler left as it was) for a history id outside the vocabulary.
  void begin(std::span<const DeviceStep> batch, std::span<const int> rows, cudaStream_t stream);
  // Samples the one-token steps' rows of `logits` (rows `vocab` wide) in one launch; their ids
  // follow to the host in the same stream.
  void launch_decode(float* logits, cudaStream_t stream);
  // Samples a longer step's row of `logits`, if it samples.
  void launch(const DeviceStep& step, float* logits, cudaStream_t stream);
  // Waits for the stream and hands each step its id, or its error with its sampler restored.
  void finish(cudaStream_t stream);
  // After a failure between begin() and finish(): every sampler back as it was.
  void abort();

private:
  struct Entry {
    const DeviceStep* step;
    Sampler before;  // the sampler as it was before its draw
  };

  int vocab_;
  std::vector<Entry> entries_;  // the one-token steps first
  int decoding_ = 0;              // how many of the entries are one-token steps
  PinnedStep args_;
  SampleRow* rows_dev_ = nullptr;
  const int* penalized_dev_ = nullptr;
  void sample(int first, int count, float* logits, cudaStream_t stream);

  DeviceBuffer<double> scratch_;  // the probabilities of the rows of one launch
  DeviceBuffer<SampleOutcome> out_;
  PinnedArray<SampleOutcome> out_host_;
};

}  // namespace mhla::cuda
