#pragma once
// Feature maps, rotary embedding and scale applied to raw q/k rows before MHLA mixes them.
#include <vector>

#include "mhla/options.hpp"

namespace mhla::detail {

void apply_feature_map(FeatureMap fm, float eps, float* x, long long n);

// cos/sin of t*theta_j for positions [first, first+count), j < d/2, angles in float64.
class RotaryTable {
public:
  RotaryTable(int dim, double base, long long first, long long count);
  // Rotates one d-wide row (rotate-half pairing j with j + d/2) for position first + r.
  void rotate(float* x, long long r) const;

private:
  int half_;
  std::vector<float> cos_, sin_;
};

// Prepared features of n tokens: qn/kn are what the numerator uses (phi, rotary, scale on q);
// qd/kd are the denominator's un-rotated copies (only for the normalized form with rotary;
// otherwise they alias qn/kn).
struct Features {
  std::vector<float> qn, kn, qd_store, kd_store;
  const float* qd = nullptr;
  const float* kd = nullptr;
};

struct FeatureSpec {
  HeadLayout layout;
  FeatureMap feature_map;
  float eps;
  bool rotary;
  double rotary_base;
  float scale;
  bool normalize;
};

// positions: first + r for token r.
Features prepare_features(const FeatureSpec& spec, const float* q, const float* k, long long n, long long first);

}  // namespace mhla::detail
