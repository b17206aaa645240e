#pragma once
// Options of the MHLA operator (MHLA.md sections 2, 3 and 5).
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace mhla {

// phi(x), applied to queries and keys before rotary and scale.
enum class FeatureMap { relu, elu1, identity, relu_eps };

// What happens to tokens at positions t >= L*C (past the trained window).
enum class ContextPolicy { strict, slide, slide_mean };

FeatureMap parse_feature_map(std::string_view name);  // throws mhla::Error on unknown names
ContextPolicy parse_policy(std::string_view name);
std::string_view to_string(FeatureMap fm);
std::string_view to_string(ContextPolicy p);

// Head shapes: H query heads of width dk, Hkv key/value heads (H a multiple of Hkv);
// query head h reads key/value head h / (H / Hkv).
struct HeadLayout {
  int heads = 0;
  int kv_heads = 0;
  int dk = 0;
  int dv = 0;

  int group() const { return heads / kv_heads; }
  void validate() const;  // throws mhla::Error naming the bad field
};

// Everything that changes the math of the causal operator.
struct CausalOptions {
  HeadLayout layout;
  int block_size = 64;                          // C
  FeatureMap feature_map = FeatureMap::relu;
  bool rotary = false;                          // rotate-half, after the feature map
  double rotary_base = 10000.0;
  std::optional<float> scale;                   // default dk^-1/2
  bool normalize = false;                       // divide by q.(mixed z) + eps
  float eps = 1e-6f;                            // normalizer epsilon and relu_eps's epsilon
  ContextPolicy policy = ContextPolicy::strict;

  float effective_scale() const;
  void validate() const;
};

// A grid of h x w tokens in row-major order, split into s x s windows taken row-major.
struct WindowGrid {
  int height = 0;
  int width = 0;
  int window = 0;
};

// Everything that changes the math of the non-causal operator.
struct NonCausalOptions {
  HeadLayout layout;
  int block_size = 64;               // 1-D blocks; ignored when grid is set (C = window^2)
  std::optional<WindowGrid> grid;
  FeatureMap feature_map = FeatureMap::relu;
  bool rotary = false;               // position = token index in the given order
  double rotary_base = 10000.0;
  std::optional<float> scale;        // default 1 (the research vision code uses no scale)
  bool normalize = true;
  float eps = 1e-6f;

  float effective_scale() const { return scale.value_or(1.0f); }
  int tokens_per_block() const;
  // Number of blocks for T tokens; throws when T does not split into whole blocks.
  int block_count(long long tokens) const;
  // The block count M of a call on T tokens, after checking its mixing matrix (M x M finite
  // weights) and its four arrays (all given); throws mhla::Error naming what is wrong.
  int checked_call(std::span<const float> mixing, long long tokens, const void* q, const void* k, const void* v,
                   const void* o) const;
  // Block of token t (grid order aware).
  int block_of(long long t) const;
  void validate() const;
};

}  // namespace mhla
