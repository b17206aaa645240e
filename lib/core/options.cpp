#include "mhla/options.hpp"

#include <cmath>
#include <fmt/format.h>

#include "mhla/error.hpp"

namespace mhla {

FeatureMap parse_feature_map(std::string_view name) {
  if (name == "relu") return FeatureMap::relu;
  if (name == "elu1") return FeatureMap::elu1;
  if (name == "identity") return FeatureMap::identity;
  if (name == "relu_eps") return FeatureMap::relu_eps;
  throw Error(fmt::format("unknown feature map '{}': use relu, elu1, identity or relu_eps", name));
}

ContextPolicy parse_policy(std::string_view name) {
  if (name == "strict") return ContextPolicy::strict;
  if (name == "slide") return ContextPolicy::slide;
  if (name == "slide_mean") return ContextPolicy::slide_mean;
  throw Error(fmt::format("unknown context policy '{}': use strict, slide or slide_mean", name));
}

std::string_view to_string(FeatureMap fm) {
  switch (fm) {
    case FeatureMap::relu: return "relu";
    case FeatureMap::elu1: return "elu1";
    case FeatureMap::identity: return "identity";
    case FeatureMap::relu_eps: return "relu_eps";
  }
  return "?";
}

std::string_view to_string(ContextPolicy p) {
  switch (p) {
    case ContextPolicy::strict: return "strict";
    case ContextPolicy::slide: return "slide";
    case ContextPolicy::slide_mean: return "slide_mean";
  }
  return "?";
}

void HeadLayout::validate() const {
  if (heads <= 0 || kv_heads <= 0 || dk <= 0 || dv <= 0)
    throw Error(fmt::format("head layout must be positive: heads={} kv_heads={} dk={} dv={}", heads,
                            kv_heads, dk, dv));
  if (heads % kv_heads != 0)
    throw Error(fmt::format("query heads ({}) must be a multiple of key/value heads ({})", heads, kv_heads));
}

namespace {
void validate_common(const HeadLayout& layout, FeatureMap fm, bool rotary, double base, bool normalize,
                     float eps, const std::optional<float>& scale) {
  layout.validate();
  if (rotary && layout.dk % 2 != 0)
    throw Error(fmt::format("rotary needs an even key width, got dk={}", layout.dk));
  if (rotary && !(base > 0 && std::isfinite(base)))
    throw Error(fmt::format("rotary base must be positive and finite, got {}", base));
  if (normalize && fm == FeatureMap::identity)
    throw Error("the normalized form needs a non-negative feature map (relu, elu1 or relu_eps), not identity");
  if (!(eps >= 0 && std::isfinite(eps))) throw Error(fmt::format("eps must be finite and >= 0, got {}", eps));
  if (scale && !std::isfinite(*scale)) throw Error("scale must be finite");
}
}  // namespace

float CausalOptions::effective_scale() const {
  return scale.value_or(1.0f / std::sqrt(static_cast<float>(layout.dk)));
}

void CausalOptions::validate() const {
  validate_common(layout, feature_map, rotary, rotary_base, normalize, eps, scale);
  if (block_size <= 0) throw Error(fmt::format("block size must be positive, got {}", block_size));
}

int NonCausalOptions::tokens_per_block() const { return grid ? grid->window * grid->window : block_size; }

int NonCausalOptions::checked_call(std::span<const float> mixing, long long tokens, const void* q, const void* k,
                                   const void* v, const void* o) const {
  const int M = block_count(tokens);
  if (mixing.size() != static_cast<size_t>(M) * M)
    throw Error(fmt::format("non-causal mixing must be {}x{} for {} blocks, got {} values", M, M, M, mixing.size()));
  for (size_t i = 0; i < mixing.size(); ++i)
    if (!std::isfinite(mixing[i]))
      throw Error(fmt::format("mixing entry [{}][{}] is {}: the weights must be finite numbers", i / M, i % M,
                              mixing[i]));
  if (!q || !k || !v || !o) throw Error("q, k, v and o must all be given");
  return M;
}

int NonCausalOptions::block_count(long long tokens) const {
  if (grid) {
    if (tokens != static_cast<long long>(grid->height) * grid->width)
      throw Error(fmt::format("the grid {}x{} holds {} tokens but the input has {}", grid->height,
                              grid->width, static_cast<long long>(grid->height) * grid->width, tokens));
    return (grid->height / grid->window) * (grid->width / grid->window);
  }
  if (tokens <= 0 || tokens % block_size != 0)
    throw Error(fmt::format("non-causal MHLA needs T to be a positive multiple of the block size {}, got T={}",
                            block_size, tokens));
  return static_cast<int>(tokens / block_size);
}

int NonCausalOptions::block_of(long long t) const {
  if (!grid) return static_cast<int>(t / block_size);
  const long long y = t / grid->width, x = t % grid->width;
  return static_cast<int>((y / grid->window) * (grid->width / grid->window) + x / grid->window);
}

void NonCausalOptions::validate() const {
  validate_common(layout, feature_map, rotary, rotary_base, normalize, eps, scale);
  if (grid) {
    if (grid->height <= 0 || grid->width <= 0 || grid->window <= 0)
      throw Error(fmt::format("grid {}x{} with window {} must be positive", grid->height, grid->width, grid->window));
    if (grid->height % grid->window != 0 || grid->width % grid->window != 0)
      throw Error(fmt::format("grid {}x{} must split into whole {}x{} windows", grid->height, grid->width,
                              grid->window, grid->window));
  } else if (block_size <= 0) {
    throw Error(fmt::format("block size must be positive, got {}", block_size));
  }
}

}  // namespace mhla
