#include "cuda/row_sampler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "mhla/error.hpp"

namespace mhla::cuda {

namespace {
// Rows per launch: each needs a scratch row of float64 probabilities, so the scratch stays
// within 64 rows of the vocabulary (16 MB at 32 000 tokens) however large the batch.
constexpr int kLaunchRows = 64;
}  // namespace

RowSampler::RowSampler(int vocab, int max_rows)
    : vocab_(vocab), out_(static_cast<size_t>(max_rows)), out_host_(static_cast<size_t>(max_rows)) {}

void RowSampler::begin(std::span<const DeviceStep> batch, std::span<const int> rows, cudaStream_t stream) {
  entries_.clear();
  decoding_ = 0;
  std::vector<SampleRow> args;
  std::vector<int> penalized;
  try {
    for (const bool one : {true, false})
      for (size_t i = 0; i < batch.size(); ++i) {
        const DeviceStep& s = batch[i];
        if (!s.sampling || (s.tokens.size() == 1) != one) continue;
        Sampler& sampler = *s.sampling->sampler;
        entries_.push_back({&s, sampler});
        const Sampler::Draw d = sampler.draw(s.sampling->history, vocab_);
        args.push_back(sample_row(sampler.params(), d, rows[i], static_cast<int>(penalized.size())));
        penalized.insert(penalized.end(), d.penalized.begin(), d.penalized.end());
        decoding_ += one ? 1 : 0;
      }
  } catch (...) {
    abort();
    throw;
  }
  if (entries_.empty()) return;
  // Growing frees the old buffer, which synchronizes the device: no launch can still use it.
  scratch_.resize(std::min<size_t>(entries_.size(), kLaunchRows) * static_cast<size_t>(vocab_));
  const size_t row_bytes = args.size() * sizeof(SampleRow), bytes = row_bytes + penalized.size() * sizeof(int);
  char* host = args_.host(bytes);
  std::copy(args.begin(), args.end(), reinterpret_cast<SampleRow*>(host));
  std::copy(penalized.begin(), penalized.end(), reinterpret_cast<int*>(host + row_bytes));
  char* dev = args_.send(bytes, stream);
  rows_dev_ = reinterpret_cast<SampleRow*>(dev);
  penalized_dev_ = reinterpret_cast<const int*>(dev + row_bytes);
}

void RowSampler::sample(int first, int count, float* logits, cudaStream_t stream) {
  if (count <= 0) return;
  for (int at = first; at < first + count; at += kLaunchRows)
    sample_rows(logits, vocab_, vocab_, std::min(kLaunchRows, first + count - at), rows_dev_ + at, penalized_dev_,
                scratch_.data(), out_.data() + at, stream);
  MHLA_CUDA_CHECK(cudaMemcpyAsync(out_host_.data() + first, out_.data() + first, count * sizeof(SampleOutcome),
                                  cudaMemcpyDeviceToHost, stream));
}

void RowSampler::launch_decode(float* logits, cudaStream_t stream) { sample(0, decoding_, logits, stream); }

void RowSampler::launch(const DeviceStep& step, float* logits, cudaStream_t stream) {
  for (size_t e = static_cast<size_t>(decoding_); e < entries_.size(); ++e)
    if (entries_[e].step == &step) sample(static_cast<int>(e), 1, logits, stream);
}

void RowSampler::finish(cudaStream_t stream) {
  if (entries_.empty()) return;
  MHLA_CUDA_CHECK(cudaStreamSynchronize(stream));
  for (size_t e = 0; e < entries_.size(); ++e) {
    DeviceSampling& s = *entries_[e].step->sampling;
    const SampleOutcome& o = out_host_.data()[e];
    s.token = o.status == SampleStatus::ok ? o.id : -1;
    s.error.clear();
    if (o.status == SampleStatus::bad_logit)
      s.error = fmt::format("sampling: logit of token {} is {}", o.id, o.value);
    else if (o.status == SampleStatus::all_neg_inf)
      s.error = "sampling: every logit is -inf";
    if (!s.error.empty()) *s.sampler = entries_[e].before;
  }
  entries_.clear();
}

void RowSampler::abort() {
  for (auto& e : entries_) *e.step->sampling->sampler = e.before;
  entries_.clear();
}

}  // namespace mhla::cuda
