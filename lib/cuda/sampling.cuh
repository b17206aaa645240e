#pragma once
// Sampling on the device: Sampler::sample's rules (include/mhla/sampling.hpp) applied to rows of
// logits where the model left them, so that only the chosen ids cross to the host. The random
// draw and the penalty's ids come from the host's Sampler (Sampler::draw), so a sequence's random
// stream is the same whichever side samples it.
#include <cuda_runtime.h>

#include "mhla/sampling.hpp"

namespace mhla::cuda {

// One row's parameters, as SamplingParams holds them.
struct SampleRow {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repeat_penalty = 1.0f;
  int row = 0;                                   // which row of logits
  int penalized_begin = 0, penalized_count = 0;  // the row's ids in the penalized array
  double uniform = 0.0;                          // the draw, in [0, 1)
};

// The row of `row` of the logits sampled with `params` and the draw `d`, whose penalized ids
// are at `penalized_begin` of the penalized array.
inline SampleRow sample_row(const SamplingParams& params, const Sampler::Draw& d, int row, int penalized_begin) {
  return {params.temperature, params.top_k,   params.top_p,    params.min_p, params.repeat_penalty,
          row,                penalized_begin, static_cast<int>(d.penalized.size()), d.uniform};
}

enum class SampleStatus : int {
  ok = 0,
  bad_logit = 1,    // a logit is NaN or +inf: id names the first such token, value holds it
  all_neg_inf = 2,  // every logit is -inf
};

struct SampleOutcome {
  int id = -1;
  SampleStatus status = SampleStatus::ok;
  float value = 0.0f;
};

// Samples a token for each of `rows` entries of `args` (entry r from the row args[r].row of
// logits, at logits + row * ld, `vocab` wide), one thread block per entry. The repetition
// penalty is applied to the logits in place. `args`, `penalized`, `scratch` (rows * vocab: the
// probabilities) and `out` are device memory. Nothing is allocated; a launch error throws.
void sample_rows(float* logits, long long ld, int vocab, int rows, const SampleRow* args, const int* penalized,
                 double* scratch, SampleOutcome* out, cudaStream_t stream);

}  // namespace mhla::cuda
