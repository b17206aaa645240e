#pragma once
// The MHLA language model on the CPU (MHLA.md section 6): loading a research-layout model
// directory, and the forward pass over a batch of sequences, each with its own state.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mhla/causal.hpp"
#include "mhla/model_config.hpp"

namespace mhla {

// Per-sequence recurrent state of every layer. Copying it forks the sequence.
struct ModelState {
  std::vector<CausalState> layers;
  ContextPolicy policy = ContextPolicy::strict;

  long long position() const { return layers.empty() ? 0 : layers.front().position(); }
  size_t byte_size() const;
};

enum class LogitsMode { none, last, all };

// One sequence's share of a forward call.
struct SequenceStep {
  ModelState* state = nullptr;
  std::span<const int> tokens;
  LogitsMode logits = LogitsMode::last;
  std::vector<float>* logits_out = nullptr;  // resized to vocab (last) or tokens*vocab (all)
};

// What identifies a model's math, so a saved session resumes only on the model it came from:
// the architecture, every tensor's shape (research names, [L, L] for mixing matrices) and an
// XXH3 64-bit hash of the loaded fp32 weights in that order (little-endian bytes), computed
// once per load. The block size is not part of it: it is an engine option (ModelLoadOptions).
struct TensorShape {
  std::string name;
  std::vector<long long> shape;
  bool operator==(const TensorShape&) const = default;
};

struct ModelFingerprint {
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_k_dim = 0;
  int head_v_dim = 0;
  int intermediate_size = 0;
  int vocab_size = 0;
  int mixing_blocks = 0;  // L
  FeatureMap feature_map = FeatureMap::relu;
  bool tie_word_embeddings = true;
  bool use_output_gate = true;
  float norm_eps = 0;
  double rope_theta = 0;
  std::vector<TensorShape> tensors;
  std::uint64_t weights_hash = 0;
  bool operator==(const ModelFingerprint&) const = default;
};

struct ModelLoadOptions {
  int block_size = 0;  // 0: config's mhla_block_size (or 64)
};

class Model {
public:
  // Loads config.json and model.safetensors (or the shards of model.safetensors.index.json);
  // checks every tensor's presence, dtype (F32, F16, BF16) and shape; throws mhla::Error naming
  // the first problem.
  static Model load(const std::string& dir, const ModelLoadOptions& options = {});
  // A model with random weights of the given configuration (benchmarks, tests).
  static Model random(const ModelConfig& config, int mixing_blocks, unsigned long long seed);

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const;
  const std::string& directory() const;
  const std::vector<std::string>& warnings() const;  // unknown config keys
  int mixing_blocks() const;                         // L
  long long trained_window() const;                  // L * C
  long long parameter_count() const;
  const ModelFingerprint& fingerprint() const;
  // Bytes of one sequence's state at its largest (every ring slot in use).
  size_t max_state_bytes() const;

  ModelState new_state(ContextPolicy policy = ContextPolicy::strict) const;

  // Runs every sequence's tokens through the model, in chunks of at most `chunk` tokens
  // (prefill), and writes the requested logits. Single-token sequences share one batched step.
  // Each sequence gets bitwise the logits it gets alone. Checks every sequence (token ids,
  // trained window under strict) before any state changes.
  void forward(std::span<const SequenceStep> batch, long long chunk = 256) const;

  struct Impl;  // the weights; defined inside the library
  const Impl& internals() const { return *impl_; }  // for the backends inside the library

private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mhla
