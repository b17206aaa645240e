#pragma once
// The loaded weights of a model, fp32, with the projections fused for fewer matrix products.
#include <string>
#include <vector>

#include "mhla/model.hpp"

namespace mhla {

struct LayerWeights {
  std::vector<float> attn_norm;  // [D]
  std::vector<float> qkvg;       // [H*dk + Hkv*dk + Hkv*dv + (gate ? H*dv : 0), D]: q, k, v, g rows
  std::vector<float> o_proj;     // [D, H*dv]
  std::vector<float> gate_norm;  // [dv]
  std::vector<float> mlp_norm;   // [D]
  std::vector<float> gate_up;    // [2I, D]: gate rows, then up rows
  std::vector<float> down;       // [D, I]
  std::vector<CausalOperator> ops;  // one per ContextPolicy, indexed by its value
};

struct Model::Impl {
  ModelConfig config;
  std::string directory;
  std::vector<std::string> warnings;
  int mixing_blocks = 0;
  std::vector<float> embeddings;  // [V, D]
  std::vector<float> final_norm;  // [D]
  std::vector<float> lm_head;     // [V, D]; empty when tied to the embeddings
  std::vector<LayerWeights> layers;
  ModelFingerprint fingerprint;

  const float* head() const { return lm_head.empty() ? embeddings.data() : lm_head.data(); }
  int qkvg_rows() const;
  // Builds the per-policy operators of every layer from its learned mixing matrix.
  void build_operators(const std::vector<std::vector<float>>& mixing);
  // Fills `fingerprint` from the configuration and the weights (the learned mixing matrices as
  // given, before clamping).
  void compute_fingerprint(const std::vector<std::vector<float>>& mixing);
};

}  // namespace mhla
