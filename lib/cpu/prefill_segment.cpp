#include <cblas.h>

#include <vector>

#include "cpu/causal_kernels.hpp"

namespace mhla::detail {

void prefill_segment(const CausalOptions& opt, float diagonal, CausalState& state, const Features& f,
                     const float* v, long long r0, int n, float* o) {
  const auto& L = opt.layout;
  const int H = L.heads, Hkv = L.kv_heads, G = L.group(), dk = L.dk, dv = L.dv;
  const size_t me = state.matrix_elems();
  std::vector<float> mixed(me), scores(static_cast<size_t>(n) * n), dscores;
  std::vector<float> mixed_z(opt.normalize ? dk : 0), den(opt.normalize ? n : 0);
  const bool separate_den = opt.normalize && opt.rotary;
  if (separate_den) dscores.resize(static_cast<size_t>(n) * n);

  for (int g = 0; g < Hkv; ++g) {
    const float* P = state.matrix(CausalState::kPrefix, g);
    float* A = state.matrix(CausalState::kRunning, g);
    for (size_t j = 0; j < me; ++j) mixed[j] = P[j] + diagonal * A[j];
    if (opt.normalize) {
      const float* Pz = state.normalizer(CausalState::kPrefix, g);
      const float* Az = state.normalizer(CausalState::kRunning, g);
      for (int j = 0; j < dk; ++j) mixed_z[j] = Pz[j] + diagonal * Az[j];
    }
    const float* K = f.kn.data() + (r0 * Hkv + g) * dk;
    const float* Kd = f.kd + (r0 * Hkv + g) * dk;
    const float* V = v + (r0 * Hkv + g) * dv;
    for (int h = g * G; h < (g + 1) * G; ++h) {
      const float* Q = f.qn.data() + (r0 * H + h) * dk;
      float* O = o + (r0 * H + h) * dv;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, dv, dk, 1.0f, Q, H * dk, mixed.data(), dv, 0.0f,
                  O, H * dv);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, dk, 1.0f, Q, H * dk, K, Hkv * dk, 0.0f,
                  scores.data(), n);
      for (int r = 0; r < n; ++r)
        for (int s = r + 1; s < n; ++s) scores[static_cast<size_t>(r) * n + s] = 0.0f;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, dv, n, diagonal, scores.data(), n, V, Hkv * dv,
                  1.0f, O, H * dv);
      if (!opt.normalize) continue;
      const float* Qd = f.qd + (r0 * H + h) * dk;
      const float* dmat = scores.data();
      if (separate_den) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, dk, 1.0f, Qd, H * dk, Kd, Hkv * dk, 0.0f,
                    dscores.data(), n);
        dmat = dscores.data();
      }
      for (int r = 0; r < n; ++r) {
        const float* qr = Qd + static_cast<size_t>(r) * H * dk;
        float prefix = 0.0f, intra = 0.0f;
        for (int j = 0; j < dk; ++j) prefix += qr[j] * mixed_z[j];
        for (int s = 0; s <= r; ++s) intra += dmat[static_cast<size_t>(r) * n + s];
        const float inv = 1.0f / (prefix + diagonal * intra + opt.eps);
        float* orow = O + static_cast<size_t>(r) * H * dv;
        for (int x = 0; x < dv; ++x) orow[x] *= inv;
      }
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dk, dv, n, 1.0f, K, Hkv * dk, V, Hkv * dv, 1.0f, A, dv);
    if (opt.normalize) {
      float* Az = state.normalizer(CausalState::kRunning, g);
      for (int s = 0; s < n; ++s)
        for (int j = 0; j < dk; ++j) Az[j] += Kd[static_cast<size_t>(s) * Hkv * dk + j];
    }
  }
}

}  // namespace mhla::detail
