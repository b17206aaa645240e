#include <algorithm>
#include <bit>
#include <cstdint>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <xxhash.h>

#include "mhla/error.hpp"
#include "mhla/safetensors.hpp"
#include "model/model_impl.hpp"

namespace mhla {

namespace fs = std::filesystem;

namespace {

// The weight files of a model directory: one model.safetensors, or the shards named by
// model.safetensors.index.json.
class WeightFiles {
public:
  explicit WeightFiles(const std::string& dir) {
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    if (fs::exists(index)) {
      std::ifstream in(index);
      std::ostringstream ss;
      ss << in.rdbuf();
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(ss.str());
      } catch (const nlohmann::json::exception& e) {
        throw Error(fmt::format("{} is not valid JSON: {}", index.string(), e.what()));
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        throw Error(fmt::format("{} has no 'weight_map' object", index.string()));
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string()) throw Error(fmt::format("{}: weight_map['{}'] is not a file name", index.string(), name));
        const auto shard = file.get<std::string>();
        if (shard.find('/') != std::string::npos || shard == "..")
          throw Error(fmt::format("{}: shard name '{}' must be a plain file name", index.string(), shard));
        if (!files_.count(shard)) files_.emplace(shard, SafetensorsFile::open((fs::path(dir) / shard).string()));
        where_[name] = shard;
      }
    } else {
      const fs::path single = fs::path(dir) / "model.safetensors";
      if (!fs::exists(single))
        throw Error(fmt::format("{} holds neither model.safetensors nor model.safetensors.index.json", dir));
      files_.emplace("model.safetensors", SafetensorsFile::open(single.string()));
      for (const auto& name : files_.at("model.safetensors").names()) where_[name] = "model.safetensors";
    }
  }

  bool contains(const std::string& name) const { return where_.count(name) > 0; }

  const TensorView& view(const std::string& name) const {
    const auto it = where_.find(name);
    if (it == where_.end()) throw Error(fmt::format("the model has no tensor '{}'", name));
    const auto& file = files_.at(it->second);
    if (!file.contains(name))
      throw Error(fmt::format("the index names '{}' in {} but that file does not hold it", name, it->second));
    return file.tensor(name);
  }

  // The tensor as fp32 after checking its dtype and shape.
  std::vector<float> read(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorView& t = view(name);
    check_dtype(t);
    if (t.shape != shape)
      throw Error(fmt::format("tensor '{}' has shape {} but the configuration needs {}", name, shape_string(t.shape),
                              shape_string(shape)));
    std::vector<float> out(static_cast<size_t>(t.elements()));
    convert_to_f32(t.dtype, t.data, out.size(), out.data());
    return out;
  }

  static void check_dtype(const TensorView& t) {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw Error(fmt::format("tensor '{}' is {}; model weights must be F32, F16 or BF16", t.name, to_string(t.dtype)));
  }

  static std::string shape_string(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

private:
  std::map<std::string, SafetensorsFile> files_;
  std::map<std::string, std::string> where_;
};

void append(std::vector<float>& dst, const std::vector<float>& src) { dst.insert(dst.end(), src.begin(), src.end()); }

// Streams fp32 values into an XXH3 hash as little-endian bytes, so every host gets the same hash.
class WeightHasher {
public:
  WeightHasher() : state_(XXH3_createState(), XXH3_freeState) {
    if (!state_) throw Error("out of memory creating the weights hash");
    XXH3_64bits_reset(state_.get());
  }
  void add(const std::vector<float>& values) {
    if constexpr (std::endian::native == std::endian::little) {
      XXH3_64bits_update(state_.get(), values.data(), values.size() * sizeof(float));
    } else {
      for (const float x : values) {
        const auto bits = std::bit_cast<uint32_t>(x);
        const unsigned char b[4] = {static_cast<unsigned char>(bits), static_cast<unsigned char>(bits >> 8),
                                    static_cast<unsigned char>(bits >> 16), static_cast<unsigned char>(bits >> 24)};
        XXH3_64bits_update(state_.get(), b, 4);
      }
    }
  }
  uint64_t digest() const { return XXH3_64bits_digest(state_.get()); }

private:
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state_;
};

}  // namespace

int Model::Impl::qkvg_rows() const {
  const auto& c = config;
  const auto L = c.layout();
  return L.heads * L.dk + L.kv_heads * L.dk + L.kv_heads * L.dv + (c.use_output_gate ? L.heads * L.dv : 0);
}

void Model::Impl::build_operators(const std::vector<std::vector<float>>& mixing) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto weights = MixingWeights::from_learned(mixing[l], mixing_blocks);
    for (auto policy : {ContextPolicy::strict, ContextPolicy::slide, ContextPolicy::slide_mean}) {
      // Slide policies need two blocks: a one-block model offers strict only.
      if (policy != ContextPolicy::strict && mixing_blocks < 2) break;
      CausalOptions opt;
      opt.layout = config.layout();
      opt.block_size = config.block_size;
      opt.feature_map = config.feature_map;
      opt.rotary = true;
      opt.rotary_base = config.rope_theta;
      opt.policy = policy;
      layers[l].ops.emplace_back(opt, weights);
    }
  }
}

void Model::Impl::compute_fingerprint(const std::vector<std::vector<float>>& mixing) {
  const auto& c = config;
  const auto hl = c.layout();
  auto& f = fingerprint;
  f = ModelFingerprint{};
  f.hidden_size = c.hidden_size;
  f.num_layers = c.num_layers;
  f.num_heads = hl.heads;
  f.num_kv_heads = hl.kv_heads;
  f.head_k_dim = hl.dk;
  f.head_v_dim = hl.dv;
  f.intermediate_size = c.intermediate_size;
  f.vocab_size = c.vocab_size;
  f.mixing_blocks = mixing_blocks;
  f.feature_map = c.feature_map;
  f.tie_word_embeddings = c.tie_word_embeddings;
  f.use_output_gate = c.use_output_gate;
  f.norm_eps = c.norm_eps;
  f.rope_theta = c.rope_theta;

  const long long D = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, L = mixing_blocks;
  const long long qd = 1LL * hl.heads * hl.dk, kd = 1LL * hl.kv_heads * hl.dk, vd = 1LL * hl.kv_heads * hl.dv,
                  gd = 1LL * hl.heads * hl.dv;
  // The names follow the hashing order; fused tensors hash as their parts in sequence.
  WeightHasher hash;
  f.tensors.push_back({"model.embeddings.weight", {V, D}});
  hash.add(embeddings);
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const LayerWeights& w = layers[l];
    f.tensors.push_back({p + "attn_norm.weight", {D}});
    f.tensors.push_back({p + "attn.q_proj.weight", {qd, D}});
    f.tensors.push_back({p + "attn.k_proj.weight", {kd, D}});
    f.tensors.push_back({p + "attn.v_proj.weight", {vd, D}});
    if (c.use_output_gate) f.tensors.push_back({p + "attn.g_proj.weight", {gd, D}});
    f.tensors.push_back({p + "attn.o_proj.weight", {D, gd}});
    f.tensors.push_back({p + "attn.mixing_matrix", {L, L}});
    f.tensors.push_back({p + "attn.g_norm_swish_gate.weight", {hl.dv}});
    f.tensors.push_back({p + "mlp_norm.weight", {D}});
    f.tensors.push_back({p + "mlp.gate_proj.weight", {I, D}});
    f.tensors.push_back({p + "mlp.up_proj.weight", {I, D}});
    f.tensors.push_back({p + "mlp.down_proj.weight", {D, I}});
    for (const auto* t : {&w.attn_norm, &w.qkvg, &w.o_proj, &mixing[l], &w.gate_norm, &w.mlp_norm, &w.gate_up, &w.down})
      hash.add(*t);
  }
  f.tensors.push_back({"model.norm.weight", {D}});
  hash.add(final_norm);
  if (!lm_head.empty()) {
    f.tensors.push_back({"lm_head.weight", {V, D}});
    hash.add(lm_head);
  }
  f.weights_hash = hash.digest();
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& dir, const ModelLoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->directory = dir;
  impl->config = ModelConfig::from_file((fs::path(dir) / "config.json").string(), &impl->warnings);
  if (options.block_size > 0) impl->config.block_size = options.block_size;
  auto& c = impl->config;
  const auto hl = c.layout();
  const int64_t D = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t qd = int64_t{hl.heads} * hl.dk, kd = int64_t{hl.kv_heads} * hl.dk, vd = int64_t{hl.kv_heads} * hl.dv,
                gd = int64_t{hl.heads} * hl.dv;

  const WeightFiles files(dir);
  impl->embeddings = files.read("model.embeddings.weight", {V, D});
  std::vector<std::vector<float>> mixing;
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    LayerWeights w;
    w.attn_norm = files.read(p + "attn_norm.weight", {D});
    append(w.qkvg, files.read(p + "attn.q_proj.weight", {qd, D}));
    append(w.qkvg, files.read(p + "attn.k_proj.weight", {kd, D}));
    append(w.qkvg, files.read(p + "attn.v_proj.weight", {vd, D}));
    if (c.use_output_gate) append(w.qkvg, files.read(p + "attn.g_proj.weight", {gd, D}));
    w.o_proj = files.read(p + "attn.o_proj.weight", {D, gd});
    w.gate_norm = files.read(p + "attn.g_norm_swish_gate.weight", {hl.dv});
    w.mlp_norm = files.read(p + "mlp_norm.weight", {D});
    append(w.gate_up, files.read(p + "mlp.gate_proj.weight", {I, D}));
    append(w.gate_up, files.read(p + "mlp.up_proj.weight", {I, D}));
    w.down = files.read(p + "mlp.down_proj.weight", {D, I});

    const std::string mname = p + "attn.mixing_matrix";
    const TensorView& m = files.view(mname);
    WeightFiles::check_dtype(m);
    const auto& s = m.shape;
    const bool square = s.size() >= 2 && s[0] == s[1] && s[0] > 0 &&
                        std::all_of(s.begin() + 2, s.end(), [](int64_t d) { return d == 1; }) &&
                        (s.size() == 2 || s.size() == 6);
    if (!square)
      throw Error(fmt::format("tensor '{}' has shape {}; a mixing matrix is [L, L] or [L, L, 1, 1, 1, 1]", mname,
                              WeightFiles::shape_string(s)));
    if (l == 0) impl->mixing_blocks = static_cast<int>(s[0]);
    if (s[0] != impl->mixing_blocks)
      throw Error(fmt::format("tensor '{}' has {} blocks but layer 0 has {}; all layers must agree", mname, s[0],
                              impl->mixing_blocks));
    std::vector<float> mv(static_cast<size_t>(m.elements()));
    convert_to_f32(m.dtype, m.data, mv.size(), mv.data());
    mixing.push_back(std::move(mv));
    impl->layers.push_back(std::move(w));
  }
  impl->final_norm = files.read("model.norm.weight", {D});
  if (files.contains("lm_head.weight"))
    impl->lm_head = files.read("lm_head.weight", {V, D});
  else if (!c.tie_word_embeddings)
    throw Error("the model has no tensor 'lm_head.weight' and config.json sets tie_word_embeddings=false");
  try {
    impl->build_operators(mixing);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", dir, e.what()));
  }
  impl->compute_fingerprint(mixing);
  return Model(std::move(impl));
}

Model Model::random(const ModelConfig& config, int mixing_blocks, unsigned long long seed) {
  config.validate();
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->directory = "(random)";
  impl->mixing_blocks = mixing_blocks;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto randn = [&](size_t n) {
    std::vector<float> x(n);
    for (auto& e : x) e = normal(rng);
    return x;
  };
  const size_t D = config.hidden_size, V = config.vocab_size, I = config.intermediate_size;
  const auto hl = config.layout();
  impl->embeddings = randn(V * D);
  impl->final_norm.assign(D, 1.0f);
  if (!config.tie_word_embeddings) impl->lm_head = randn(V * D);
  std::vector<std::vector<float>> mixing;
  for (int l = 0; l < config.num_layers; ++l) {
    LayerWeights w;
    w.attn_norm.assign(D, 1.0f);
    w.qkvg = randn(static_cast<size_t>(impl->qkvg_rows()) * D);
    w.o_proj = randn(D * hl.heads * hl.dv);
    w.gate_norm.assign(hl.dv, 1.0f);
    w.mlp_norm.assign(D, 1.0f);
    w.gate_up = randn(2 * I * D);
    w.down = randn(D * I);
    impl->layers.push_back(std::move(w));
    mixing.push_back(MixingWeights::locality_init(mixing_blocks).values());
  }
  impl->build_operators(mixing);
  impl->compute_fingerprint(mixing);
  return Model(std::move(impl));
}

const ModelConfig& Model::config() const { return impl_->config; }
const std::string& Model::directory() const { return impl_->directory; }
const std::vector<std::string>& Model::warnings() const { return impl_->warnings; }
int Model::mixing_blocks() const { return impl_->mixing_blocks; }
long long Model::trained_window() const { return static_cast<long long>(impl_->mixing_blocks) * impl_->config.block_size; }

const ModelFingerprint& Model::fingerprint() const { return impl_->fingerprint; }

long long Model::parameter_count() const {
  long long n = static_cast<long long>(impl_->embeddings.size() + impl_->final_norm.size() + impl_->lm_head.size());
  for (const auto& w : impl_->layers)
    n += static_cast<long long>(w.attn_norm.size() + w.qkvg.size() + w.o_proj.size() + w.gate_norm.size() +
                                w.mlp_norm.size() + w.gate_up.size() + w.down.size()) +
         static_cast<long long>(impl_->mixing_blocks) * impl_->mixing_blocks;
  return n;
}

size_t Model::max_state_bytes() const {
  const auto s = new_state();
  return s.layers.size() * s.layers.front().max_byte_size();
}

ModelState Model::new_state(ContextPolicy policy) const {
  ModelState s;
  s.policy = policy;
  for (const auto& w : impl_->layers) s.layers.push_back(w.ops.front().new_state());
  return s;
}

size_t ModelState::byte_size() const {
  size_t n = 0;
  for (const auto& l : layers) n += l.byte_size();
  return n;
}

}  // namespace mhla
