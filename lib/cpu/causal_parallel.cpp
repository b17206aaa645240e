// The parallel form: every block summary at once, the prefixes of all blocks as one product
// with the dense effective mixing matrix, then each block's own triangle.
#include <cblas.h>

#include <algorithm>
#include <fmt/format.h>
#include <vector>

#include "core/features.hpp"
#include "mhla/causal.hpp"
#include "mhla/error.hpp"

namespace mhla {

void CausalOperator::parallel(CausalState& state, const float* q, const float* k, const float* v, long long tokens,
                              float* o) const {
  if (tokens < 0) throw Error(fmt::format("token count must be >= 0, got {}", tokens));
  if (tokens > 0 && (!q || !k || !v || !o)) throw Error("q, k, v and o must all be given");
  check_admissible(state, tokens);
  if (state.position() != 0)
    throw Error(fmt::format("the parallel form starts from a fresh state, but this one is at position {}; "
                            "use prefill to continue a sequence",
                            state.position()));
  if (tokens == 0) return;

  const auto& L = options_.layout;
  const int H = L.heads, Hkv = L.kv_heads, G = L.group(), dk = L.dk, dv = L.dv, C = options_.block_size;
  const detail::Features f = detail::prepare_features(
      {L, options_.feature_map, options_.eps, options_.rotary, options_.rotary_base, options_.effective_scale(),
       options_.normalize},
      q, k, tokens, 0);
  const long long M = (tokens + C - 1) / C;
  const size_t me = static_cast<size_t>(dk) * dv;
  const bool norm = options_.normalize;

  // Strictly lower effective weights and the diagonal, from the same rule the state uses.
  std::vector<float> W(static_cast<size_t>(M * M), 0.0f), diag(M);
  for (long long i = 0; i < M; ++i) {
    diag[i] = static_cast<float>(effective_weight(weights_, options_.policy, i, i));
    for (long long b = 0; b < i; ++b) W[i * M + b] = static_cast<float>(effective_weight(weights_, options_.policy, i, b));
  }

  const long long last = M - 1;
  const int recent = static_cast<int>(std::min<long long>(last, state.recent_capacity()));
  state.reset_to(tokens, last - recent, recent);

  std::vector<float> S(M * me), Pm(M * me), Z(norm ? M * dk : 0), Pz(norm ? M * dk : 0);
  std::vector<float> scores(static_cast<size_t>(C) * C), dscores(static_cast<size_t>(C) * C);
  for (int g = 0; g < Hkv; ++g) {
    for (long long b = 0; b < M; ++b) {
      const long long r0 = b * C;
      const int n = static_cast<int>(std::min<long long>(C, tokens - r0));
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, dk, dv, n, 1.0f, f.kn.data() + (r0 * Hkv + g) * dk,
                  Hkv * dk, v + (r0 * Hkv + g) * dv, Hkv * dv, 0.0f, S.data() + b * me, dv);
      if (norm) {
        float* z = Z.data() + b * dk;
        std::fill_n(z, dk, 0.0f);
        for (int s = 0; s < n; ++s)
          for (int j = 0; j < dk; ++j) z[j] += f.kd[((r0 + s) * Hkv + g) * dk + j];
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(M), static_cast<int>(me),
                static_cast<int>(M), 1.0f, W.data(), static_cast<int>(M), S.data(), static_cast<int>(me), 0.0f,
                Pm.data(), static_cast<int>(me));
    if (norm)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(M), dk, static_cast<int>(M), 1.0f,
                  W.data(), static_cast<int>(M), Z.data(), dk, 0.0f, Pz.data(), dk);

    for (long long b = 0; b < M; ++b) {
      const long long r0 = b * C;
      const int n = static_cast<int>(std::min<long long>(C, tokens - r0));
      const float* K = f.kn.data() + (r0 * Hkv + g) * dk;
      const float* V = v + (r0 * Hkv + g) * dv;
      for (int h = g * G; h < (g + 1) * G; ++h) {
        const float* Q = f.qn.data() + (r0 * H + h) * dk;
        float* O = o + (r0 * H + h) * dv;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, dv, dk, 1.0f, Q, H * dk, Pm.data() + b * me, dv,
                    0.0f, O, H * dv);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, dk, 1.0f, Q, H * dk, K, Hkv * dk, 0.0f,
                    scores.data(), n);
        for (int r = 0; r < n; ++r)
          for (int s = r + 1; s < n; ++s) scores[static_cast<size_t>(r) * n + s] = 0.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, dv, n, diag[b], scores.data(), n, V, Hkv * dv,
                    1.0f, O, H * dv);
        if (!norm) continue;
        const float* Qd = f.qd + (r0 * H + h) * dk;
        const float* Kd = f.kd + (r0 * Hkv + g) * dk;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, dk, 1.0f, Qd, H * dk, Kd, Hkv * dk, 0.0f,
                    dscores.data(), n);
        for (int r = 0; r < n; ++r) {
          const float* qr = Qd + static_cast<size_t>(r) * H * dk;
          float prefix = 0.0f, intra = 0.0f;
          for (int j = 0; j < dk; ++j) prefix += qr[j] * Pz[b * dk + j];
          for (int s = 0; s <= r; ++s) intra += dscores[static_cast<size_t>(r) * n + s];
          const float inv = 1.0f / (prefix + diag[b] * intra + options_.eps);
          float* orow = O + static_cast<size_t>(r) * H * dv;
          for (int x = 0; x < dv; ++x) orow[x] *= inv;
        }
      }
    }

    // The final state: P and A of the last block, the newest completed summaries one by one,
    // the older ones summed into the tail.
    std::copy_n(Pm.data() + last * me, me, state.matrix(CausalState::kPrefix, g));
    std::copy_n(S.data() + last * me, me, state.matrix(CausalState::kRunning, g));
    for (int r = 1; r <= recent; ++r) std::copy_n(S.data() + (last - r) * me, me, state.matrix(state.recent_slot(r), g));
    float* tail = state.matrix(CausalState::kTail, g);
    for (long long b = 0; b < last - recent; ++b)
      for (size_t j = 0; j < me; ++j) tail[j] += S[b * me + j];
    if (norm) {
      std::copy_n(Pz.data() + last * dk, dk, state.normalizer(CausalState::kPrefix, g));
      std::copy_n(Z.data() + last * dk, dk, state.normalizer(CausalState::kRunning, g));
      for (int r = 1; r <= recent; ++r) std::copy_n(Z.data() + (last - r) * dk, dk, state.normalizer(state.recent_slot(r), g));
      float* tz = state.normalizer(CausalState::kTail, g);
      for (long long b = 0; b < last - recent; ++b)
        for (int j = 0; j < dk; ++j) tz[j] += Z[b * dk + j];
    }
  }
}

}  // namespace mhla
