#include <cmath>
#include <fmt/format.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mhla/error.hpp"
#include "mhla/model_config.hpp"

namespace mhla {

namespace {

using json = nlohmann::json;

// Keys of the research configuration that only steer training kernels or bookkeeping.
const std::set<std::string> kIgnoredKeys = {
    "fuse_norm", "fuse_swiglu", "fuse_cross_entropy", "fuse_linear_cross_entropy", "attn_mode", "use_cache",
    "use_gk", "use_gv", "clamp_min", "initializer_range", "max_position_embeddings", "elementwise_affine",
    "use_l2warp", "transformers_version", "torch_dtype", "architectures", "conv_size", "expand_ratio",
    "gate_logit_normalizer", "gate_low_rank_dim", "pad_token_id", "tokenizer_class", "auto_map"};

template <class T>
T get(const json& j, const char* key, T fallback) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw Error(fmt::format("config.json: key '{}' has the wrong type ({})", key, it->type_name()));
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(std::string_view text, std::vector<std::string>* warnings) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("config.json is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) throw Error("config.json must hold a JSON object");

  if (get<bool>(j, "use_short_conv", false))
    throw Error("config.json: use_short_conv=true is not supported (the engine has no short convolution); "
                "only MHLA models without it can run");
  if (j.contains("attn") && !j["attn"].is_null())
    throw Error("config.json: 'attn' (hybrid softmax-attention layers) is not supported; it must be null");
  const auto act = get<std::string>(j, "hidden_act", "swish");
  if (act != "swish" && act != "silu")
    throw Error(fmt::format("config.json: hidden_act '{}' is not supported; only swish", act));

  ModelConfig c;
  c.hidden_size = get(j, "hidden_size", c.hidden_size);
  c.num_layers = get(j, "num_hidden_layers", c.num_layers);
  c.num_heads = get(j, "num_heads", c.num_heads);
  c.num_kv_heads = get(j, "num_kv_heads", c.num_heads);
  c.expand_k = get(j, "expand_k", c.expand_k);
  c.expand_v = get(j, "expand_v", c.expand_v);
  c.hidden_ratio = get(j, "hidden_ratio", c.hidden_ratio);
  c.norm_eps = get(j, "norm_eps", c.norm_eps);
  c.vocab_size = get(j, "vocab_size", c.vocab_size);
  c.tie_word_embeddings = get(j, "tie_word_embeddings", c.tie_word_embeddings);
  c.bos_token_id = get(j, "bos_token_id", c.bos_token_id);
  c.eos_token_id = get(j, "eos_token_id", c.eos_token_id);
  c.use_output_gate = get(j, "use_output_gate", c.use_output_gate);
  c.rope_theta = get(j, "rope_theta", c.rope_theta);
  c.block_size = get(j, "mhla_block_size", c.block_size);
  const auto fm = get<std::string>(j, "feature_map", "relu");
  try {
    c.feature_map = parse_feature_map(fm);
  } catch (const Error&) {
    throw Error(fmt::format("config.json: feature_map '{}' is not supported (relu, elu1, identity, relu_eps)", fm));
  }
  // The engine's own rule when intermediate_size is null: 256 * ceil(floor(hidden*ratio*2/3) / 256).
  const int derived = 256 * static_cast<int>(std::ceil(std::floor(c.hidden_size * c.hidden_ratio * 2.0 / 3.0) / 256.0));
  c.intermediate_size = get(j, "intermediate_size", derived);

  if (warnings) {
    static const std::set<std::string> kUsed = {
        "hidden_size", "num_hidden_layers", "num_heads", "expand_k", "expand_v", "hidden_ratio", "norm_eps",
        "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id", "use_output_gate", "feature_map",
        "hidden_act", "attn", "use_short_conv", "num_kv_heads", "intermediate_size", "rope_theta",
        "mhla_block_size", "model_type", "attn_extends"};
    for (const auto& [key, value] : j.items())
      if (!kUsed.count(key) && !kIgnoredKeys.count(key))
        warnings->push_back(fmt::format("config.json: unknown key '{}' ignored", key));
  }
  c.validate();
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path, std::vector<std::string>* warnings) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: the model directory needs a config.json", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return from_json(ss.str(), warnings);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", path, e.what()));
  }
}

void ModelConfig::validate() const {
  auto positive = [](const char* key, double v) {
    if (!(v > 0)) throw Error(fmt::format("config.json: '{}' must be positive, got {}", key, v));
  };
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_layers);
  positive("num_heads", num_heads);
  positive("num_kv_heads", num_kv_heads);
  positive("expand_k", expand_k);
  positive("expand_v", expand_v);
  positive("intermediate_size", intermediate_size);
  positive("vocab_size", vocab_size);
  positive("norm_eps", norm_eps);
  positive("mhla_block_size", block_size);
  positive("rope_theta", rope_theta);
  auto whole = [](const char* what, double v) {
    if (std::abs(v - std::round(v)) > 1e-9)
      throw Error(fmt::format("config.json: {} = {} is not a whole number", what, v));
  };
  whole("hidden_size * expand_k", hidden_size * expand_k);
  whole("hidden_size * expand_v", hidden_size * expand_v);
  if (key_dim() % num_heads != 0 || value_dim() % num_heads != 0)
    throw Error(fmt::format("config.json: key_dim {} and value_dim {} must split evenly over num_heads {}", key_dim(),
                            value_dim(), num_heads));
  if (num_heads % num_kv_heads != 0)
    throw Error(fmt::format("config.json: num_heads {} must be a multiple of num_kv_heads {}", num_heads,
                            num_kv_heads));
  if (head_k_dim() % 2 != 0)
    throw Error(fmt::format("config.json: the key head width {} must be even for rotary", head_k_dim()));
  if (bos_token_id < 0 || bos_token_id >= vocab_size || eos_token_id < 0 || eos_token_id >= vocab_size)
    throw Error(fmt::format("config.json: bos_token_id {} / eos_token_id {} outside the vocabulary of {}",
                            bos_token_id, eos_token_id, vocab_size));
}

}  // namespace mhla
