#include "core/features.hpp"

#include <algorithm>
#include <cmath>

namespace mhla::detail {

void apply_feature_map(FeatureMap fm, float eps, float* x, long long n) {
  switch (fm) {
    case FeatureMap::relu:
      for (long long i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f);
      break;
    case FeatureMap::relu_eps:
      for (long long i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f) + eps;
      break;
    case FeatureMap::elu1:
      for (long long i = 0; i < n; ++i) x[i] = x[i] > 0 ? x[i] + 1.0f : std::exp(x[i]);
      break;
    case FeatureMap::identity:
      break;
  }
}

RotaryTable::RotaryTable(int dim, double base, long long first, long long count)
    : half_(dim / 2), cos_(static_cast<size_t>(count) * half_), sin_(static_cast<size_t>(count) * half_) {
  std::vector<double> theta(half_);
  for (int j = 0; j < half_; ++j) theta[j] = std::pow(base, -2.0 * j / dim);
  for (long long r = 0; r < count; ++r) {
    const double t = static_cast<double>(first + r);
    for (int j = 0; j < half_; ++j) {
      const double a = t * theta[j];
      cos_[r * half_ + j] = static_cast<float>(std::cos(a));
      sin_[r * half_ + j] = static_cast<float>(std::sin(a));
    }
  }
}

void RotaryTable::rotate(float* x, long long r) const {
  const float* c = cos_.data() + r * half_;
  const float* s = sin_.data() + r * half_;
  for (int j = 0; j < half_; ++j) {
    const float a = x[j], b = x[j + half_];
    x[j] = a * c[j] - b * s[j];
    x[j + half_] = b * c[j] + a * s[j];
  }
}

Features prepare_features(const FeatureSpec& spec, const float* q, const float* k, long long n, long long first) {
  const auto& L = spec.layout;
  const long long qsize = n * L.heads * L.dk, ksize = n * L.kv_heads * L.dk;
  Features f;
  f.qn.assign(q, q + qsize);
  f.kn.assign(k, k + ksize);
  apply_feature_map(spec.feature_map, spec.eps, f.qn.data(), qsize);
  apply_feature_map(spec.feature_map, spec.eps, f.kn.data(), ksize);
  if (spec.scale != 1.0f)
    for (auto& x : f.qn) x *= spec.scale;
  if (spec.rotary) {
    if (spec.normalize) {
      f.qd_store = f.qn;
      f.kd_store = f.kn;
    }
    const RotaryTable table(L.dk, spec.rotary_base, first, n);
    for (long long r = 0; r < n; ++r) {
      for (int h = 0; h < L.heads; ++h) table.rotate(f.qn.data() + (r * L.heads + h) * L.dk, r);
      for (int h = 0; h < L.kv_heads; ++h) table.rotate(f.kn.data() + (r * L.kv_heads + h) * L.dk, r);
    }
  }
  f.qd = f.qd_store.empty() ? f.qn.data() : f.qd_store.data();
  f.kd = f.kd_store.empty() ? f.kn.data() : f.kd_store.data();
  return f;
}

}  // namespace mhla::detail
