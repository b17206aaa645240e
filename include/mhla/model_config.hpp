#pragma once
// The configuration of an MHLA language model (MHLA.md section 6), read from the research
// code's config.json.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mhla/options.hpp"

namespace mhla {

struct ModelConfig {
  int hidden_size = 1024;
  int num_layers = 24;
  int num_heads = 4;
  int num_kv_heads = 4;
  double expand_k = 0.5;
  double expand_v = 1.0;
  int hidden_ratio = 4;
  int intermediate_size = 0;  // derived when config.json has null
  FeatureMap feature_map = FeatureMap::relu;
  float norm_eps = 1e-6f;
  int vocab_size = 32000;
  bool tie_word_embeddings = true;
  int bos_token_id = 1;
  int eos_token_id = 2;
  bool use_output_gate = true;
  double rope_theta = 10000.0;
  int block_size = 64;  // mhla_block_size

  int key_dim() const { return static_cast<int>(hidden_size * expand_k); }
  int value_dim() const { return static_cast<int>(hidden_size * expand_v); }
  int head_k_dim() const { return key_dim() / num_heads; }
  int head_v_dim() const { return value_dim() / num_heads; }
  HeadLayout layout() const { return {num_heads, num_kv_heads, head_k_dim(), head_v_dim()}; }

  // Parses config.json text. Keys that steer only training are ignored; unknown keys are
  // appended to `warnings`; refused options throw mhla::Error naming the key.
  static ModelConfig from_json(std::string_view text, std::vector<std::string>* warnings = nullptr);
  static ModelConfig from_file(const std::string& path, std::vector<std::string>* warnings = nullptr);
  // Checks the derived shapes are whole numbers; throws mhla::Error naming the key.
  void validate() const;
};

}  // namespace mhla
