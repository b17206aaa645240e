// Non-causal MHLA: all M block summaries, one full mixture per query block, normalized.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "core/features.hpp"
#include "mhla/causal.hpp"

namespace mhla {

void noncausal_forward(const NonCausalOptions& opt, std::span<const float> mixing, const float* q, const float* k,
                       const float* v, long long tokens, float* o) {
  opt.validate();
  const int M = opt.checked_call(mixing, tokens, q, k, v, o);

  const auto& L = opt.layout;
  const int H = L.heads, Hkv = L.kv_heads, G = L.group(), dk = L.dk, dv = L.dv;
  const detail::Features f = detail::prepare_features(
      {L, opt.feature_map, opt.eps, opt.rotary, opt.rotary_base, opt.effective_scale(), opt.normalize}, q, k, tokens,
      0);
  const size_t me = static_cast<size_t>(dk) * dv;

  // Token indices of each block, in order (windows gather scattered rows of the grid).
  const int C = opt.tokens_per_block();
  std::vector<long long> members(static_cast<size_t>(M) * C);
  std::vector<int> fill(M, 0);
  for (long long t = 0; t < tokens; ++t) {
    const int b = opt.block_of(t);
    members[static_cast<size_t>(b) * C + fill[b]++] = t;
  }

  std::vector<float> S(M * me), Smix(M * me), Z(static_cast<size_t>(M) * dk), Zmix(static_cast<size_t>(M) * dk);
  std::vector<float> kb(static_cast<size_t>(C) * dk), vb(static_cast<size_t>(C) * dv);
  for (int g = 0; g < Hkv; ++g) {
    for (int b = 0; b < M; ++b) {
      float* z = Z.data() + static_cast<size_t>(b) * dk;
      std::fill_n(z, dk, 0.0f);
      for (int s = 0; s < C; ++s) {
        const long long t = members[static_cast<size_t>(b) * C + s];
        std::copy_n(f.kn.data() + (t * Hkv + g) * dk, dk, kb.data() + static_cast<size_t>(s) * dk);
        std::copy_n(v + (t * Hkv + g) * dv, dv, vb.data() + static_cast<size_t>(s) * dv);
        for (int j = 0; j < dk; ++j) z[j] += f.kd[(t * Hkv + g) * dk + j];
      }
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dk, dv, C, 1.0f, kb.data(), dk, vb.data(), dv, 0.0f,
                  S.data() + b * me, dv);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, static_cast<int>(me), M, 1.0f, mixing.data(), M,
                S.data(), static_cast<int>(me), 0.0f, Smix.data(), static_cast<int>(me));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, dk, M, 1.0f, mixing.data(), M, Z.data(), dk, 0.0f,
                Zmix.data(), dk);
    for (long long t = 0; t < tokens; ++t) {
      const int b = opt.block_of(t);
      const float* Sm = Smix.data() + b * me;
      for (int h = g * G; h < (g + 1) * G; ++h) {
        const float* qt = f.qn.data() + (t * H + h) * dk;
        float* ot = o + (t * H + h) * dv;
        cblas_sgemv(CblasRowMajor, CblasTrans, dk, dv, 1.0f, Sm, dv, qt, 1, 0.0f, ot, 1);
        if (!opt.normalize) continue;
        const float* qd = f.qd + (t * H + h) * dk;
        float den = 0.0f;
        for (int j = 0; j < dk; ++j) den += qd[j] * Zmix[static_cast<size_t>(b) * dk + j];
        const float inv = 1.0f / (den + opt.eps);
        for (int x = 0; x < dv; ++x) ot[x] *= inv;
      }
    }
  }
}

}  // namespace mhla
