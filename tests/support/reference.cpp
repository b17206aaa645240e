#include "support/reference.hpp"

#include <cmath>

namespace mhla::test {

namespace {

double feature(FeatureMap fm, double x, double eps) {
  switch (fm) {
    case FeatureMap::relu: return x > 0 ? x : 0.0;
    case FeatureMap::relu_eps: return (x > 0 ? x : 0.0) + eps;
    case FeatureMap::elu1: return x > 0 ? x + 1.0 : std::exp(x);
    case FeatureMap::identity: return x;
  }
  return x;
}

// phi, then optional rotary at position t, then scale; `rotated` false gives the un-rotated copy.
std::vector<double> features_of(const float* x, int d, FeatureMap fm, double eps, bool rotary, double base,
                                long long t, double scale) {
  std::vector<double> f(d);
  for (int j = 0; j < d; ++j) f[j] = feature(fm, x[j], eps) * scale;
  if (!rotary) return f;
  std::vector<double> r(f);
  const int half = d / 2;
  for (int j = 0; j < half; ++j) {
    const double a = static_cast<double>(t) * std::pow(base, -2.0 * j / d);
    r[j] = f[j] * std::cos(a) - f[j + half] * std::sin(a);
    r[j + half] = f[j + half] * std::cos(a) + f[j] * std::sin(a);
  }
  return r;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

namespace {

struct RefFeatures {
  std::vector<std::vector<double>> qn, qd, kn, kd;  // [row = t*heads + h]
};

RefFeatures all_features(const HeadLayout& L, FeatureMap fm, double eps, bool rotary, double base, double scale,
                         const std::vector<float>& q, const std::vector<float>& k, long long tokens) {
  RefFeatures f;
  for (long long t = 0; t < tokens; ++t) {
    for (int h = 0; h < L.heads; ++h) {
      const float* x = q.data() + (t * L.heads + h) * L.dk;
      f.qn.push_back(features_of(x, L.dk, fm, eps, rotary, base, t, scale));
      f.qd.push_back(features_of(x, L.dk, fm, eps, false, 0, t, scale));
    }
    for (int g = 0; g < L.kv_heads; ++g) {
      const float* x = k.data() + (t * L.kv_heads + g) * L.dk;
      f.kn.push_back(features_of(x, L.dk, fm, eps, rotary, base, t, 1.0));
      f.kd.push_back(features_of(x, L.dk, fm, eps, false, 0, t, 1.0));
    }
  }
  return f;
}

// o_t = sum_s weight(t, s) (q_t . k_s) v_s over the tokens `weight` admits, optionally normalized.
template <class Weight>
std::vector<double> mix_tokens(const HeadLayout& L, const RefFeatures& f, const std::vector<float>& v,
                               long long tokens, bool normalize, double eps, Weight weight) {
  std::vector<double> o(static_cast<size_t>(tokens) * L.heads * L.dv, 0.0);
  for (long long t = 0; t < tokens; ++t)
    for (int h = 0; h < L.heads; ++h) {
      const int g = h / L.group();
      const size_t qi = t * L.heads + h;
      double den = 0;
      double* ot = o.data() + qi * L.dv;
      for (long long s = 0; s < tokens; ++s) {
        const double ws = weight(t, s);
        if (ws == 0) continue;
        const size_t ki = s * L.kv_heads + g;
        const double a = ws * dot(f.qn[qi], f.kn[ki]);
        for (int x = 0; x < L.dv; ++x) ot[x] += a * v[ki * L.dv + x];
        if (normalize) den += ws * dot(f.qd[qi], f.kd[ki]);
      }
      if (normalize)
        for (int x = 0; x < L.dv; ++x) ot[x] /= den + eps;
    }
  return o;
}

}  // namespace

std::vector<double> reference_causal(const CausalOptions& opt, const MixingWeights& w, const std::vector<float>& q,
                                     const std::vector<float>& k, const std::vector<float>& v, long long tokens) {
  const auto f = all_features(opt.layout, opt.feature_map, opt.eps, opt.rotary, opt.rotary_base,
                              opt.effective_scale(), q, k, tokens);
  const long long C = opt.block_size;
  return mix_tokens(opt.layout, f, v, tokens, opt.normalize, opt.eps, [&](long long t, long long s) {
    return s <= t ? effective_weight(w, opt.policy, t / C, s / C) : 0.0;
  });
}

std::vector<double> reference_noncausal(const NonCausalOptions& opt, const std::vector<float>& mixing,
                                        const std::vector<float>& q, const std::vector<float>& k,
                                        const std::vector<float>& v, long long tokens) {
  const int M = opt.block_count(tokens);
  const auto f = all_features(opt.layout, opt.feature_map, opt.eps, opt.rotary, opt.rotary_base,
                              opt.effective_scale(), q, k, tokens);
  return mix_tokens(opt.layout, f, v, tokens, opt.normalize, opt.eps, [&](long long t, long long s) {
    return static_cast<double>(mixing[static_cast<size_t>(opt.block_of(t)) * M + opt.block_of(s)]);
  });
}

std::vector<float> random_vector(std::mt19937_64& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (auto& e : x) e = dist(rng);
  return x;
}

double relative_error(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  return relative_error(a, std::vector<double>(b.begin(), b.end()));
}

CausalInputs random_inputs(std::mt19937_64& rng, const HeadLayout& layout, long long tokens, float qk_lo) {
  return {random_vector(rng, static_cast<size_t>(tokens) * layout.heads * layout.dk, qk_lo, 1.0f),
          random_vector(rng, static_cast<size_t>(tokens) * layout.kv_heads * layout.dk, qk_lo, 1.0f),
          random_vector(rng, static_cast<size_t>(tokens) * layout.kv_heads * layout.dv)};
}

}  // namespace mhla::test
