#include <algorithm>

#include "cpu/causal_kernels.hpp"

namespace mhla::detail {

// One pass over P and A: the decode step is bound by reading them, so A is updated and read in
// the same sweep.
void decode_head(const CausalOptions& opt, float diagonal, CausalState& state, const float* qn, const float* kn,
                 const float* qd, const float* kd, const float* v, float* o, int g) {
  const auto& L = opt.layout;
  const int G = L.group(), dk = L.dk, dv = L.dv;
  const float* __restrict P = state.matrix(CausalState::kPrefix, g);
  float* __restrict A = state.matrix(CausalState::kRunning, g);
  const float* __restrict vg = v + static_cast<size_t>(g) * dv;
  const float* __restrict kg = kn + static_cast<size_t>(g) * dk;
  float* __restrict out = o + static_cast<size_t>(g) * G * dv;
  std::fill_n(out, static_cast<size_t>(G) * dv, 0.0f);

  for (int j = 0; j < dk; ++j) {
    const float kj = kg[j];
    float* __restrict arow = A + static_cast<size_t>(j) * dv;
    const float* __restrict prow = P + static_cast<size_t>(j) * dv;
    if (G == 1) {
      const float qj = qn[static_cast<size_t>(g) * dk + j];
      for (int x = 0; x < dv; ++x) {
        const float a = arow[x] + kj * vg[x];
        arow[x] = a;
        out[x] += qj * (prow[x] + diagonal * a);
      }
    } else {
      for (int x = 0; x < dv; ++x) arow[x] += kj * vg[x];
      for (int hh = 0; hh < G; ++hh) {
        const float qj = qn[static_cast<size_t>(g * G + hh) * dk + j];
        float* __restrict oh = out + static_cast<size_t>(hh) * dv;
        for (int x = 0; x < dv; ++x) oh[x] += qj * (prow[x] + diagonal * arow[x]);
      }
    }
  }

  if (!opt.normalize) return;
  const float* Pz = state.normalizer(CausalState::kPrefix, g);
  float* Az = state.normalizer(CausalState::kRunning, g);
  const float* kdg = kd + static_cast<size_t>(g) * dk;
  for (int j = 0; j < dk; ++j) Az[j] += kdg[j];
  for (int hh = 0; hh < G; ++hh) {
    const float* qh = qd + static_cast<size_t>(g * G + hh) * dk;
    float den = 0.0f;
    for (int j = 0; j < dk; ++j) den += qh[j] * (Pz[j] + diagonal * Az[j]);
    const float inv = 1.0f / (den + opt.eps);
    float* oh = out + static_cast<size_t>(hh) * dv;
    for (int x = 0; x < dv; ++x) oh[x] *= inv;
  }
}

}  // namespace mhla::detail
