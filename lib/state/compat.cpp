#include "state/compat.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mhla/error.hpp"

namespace mhla::state_format {

namespace {

std::string describe(const TensorShape& t) { return fmt::format("'{}' [{}]", t.name, fmt::join(t.shape, ", ")); }

// The first difference between two fingerprints, in words; empty when they agree.
std::string first_difference(const ModelFingerprint& a, const ModelFingerprint& b) {
  const std::pair<const char*, std::pair<std::string, std::string>> fields[] = {
      {"hidden_size", {fmt::format("{}", a.hidden_size), fmt::format("{}", b.hidden_size)}},
      {"num_hidden_layers", {fmt::format("{}", a.num_layers), fmt::format("{}", b.num_layers)}},
      {"num_heads", {fmt::format("{}", a.num_heads), fmt::format("{}", b.num_heads)}},
      {"num_kv_heads", {fmt::format("{}", a.num_kv_heads), fmt::format("{}", b.num_kv_heads)}},
      {"head key width", {fmt::format("{}", a.head_k_dim), fmt::format("{}", b.head_k_dim)}},
      {"head value width", {fmt::format("{}", a.head_v_dim), fmt::format("{}", b.head_v_dim)}},
      {"intermediate_size", {fmt::format("{}", a.intermediate_size), fmt::format("{}", b.intermediate_size)}},
      {"vocab_size", {fmt::format("{}", a.vocab_size), fmt::format("{}", b.vocab_size)}},
      {"mixing blocks L", {fmt::format("{}", a.mixing_blocks), fmt::format("{}", b.mixing_blocks)}},
      {"feature_map", {std::string(to_string(a.feature_map)), std::string(to_string(b.feature_map))}},
      {"tie_word_embeddings", {fmt::format("{}", a.tie_word_embeddings), fmt::format("{}", b.tie_word_embeddings)}},
      {"use_output_gate", {fmt::format("{}", a.use_output_gate), fmt::format("{}", b.use_output_gate)}},
      {"norm_eps", {fmt::format("{}", a.norm_eps), fmt::format("{}", b.norm_eps)}},
      {"rope_theta", {fmt::format("{}", a.rope_theta), fmt::format("{}", b.rope_theta)}},
  };
  for (const auto& [name, values] : fields)
    if (values.first != values.second)
      return fmt::format("{} is {} there and {} here", name, values.first, values.second);
  for (size_t i = 0; i < std::max(a.tensors.size(), b.tensors.size()); ++i) {
    if (i >= a.tensors.size())
      return fmt::format("it has no tensor {} where this model has {}", i, describe(b.tensors[i]));
    if (i >= b.tensors.size())
      return fmt::format("its tensor {} is {}, which this model lacks", i, describe(a.tensors[i]));
    if (a.tensors[i] != b.tensors[i])
      return fmt::format("tensor {} is {} there and {} here", i, describe(a.tensors[i]), describe(b.tensors[i]));
  }
  if (a.weights_hash != b.weights_hash)
    return fmt::format("the architecture matches but the weights differ (hash {:016x} there, {:016x} here)",
                       a.weights_hash, b.weights_hash);
  return {};
}

}  // namespace

void check_same_model(const ModelFingerprint& saved, std::string_view saved_directory, const Model& model,
                      std::string_view where) {
  const std::string diff = first_difference(saved, model.fingerprint());
  if (!diff.empty())
    throw Error(
        fmt::format("{} was saved with another model than {}: {}; resume it with the model it was saved "
                    "with (it was loaded from {})",
                    where, model.directory(), diff, saved_directory));
}

void check_same_math(int block_size, bool normalized, const Model& model, bool model_normalized,
                     std::string_view where) {
  if (block_size != model.config().block_size)
    throw Error(
        fmt::format("{} was saved with block size {} but the model is loaded with block size {}; the block "
                    "size changes the math: load the model with block size {}",
                    where, block_size, model.config().block_size, block_size));
  if (normalized != model_normalized)
    throw Error(fmt::format(
        "{} holds a {} state but this model's state is {}; resume it with the model it was "
        "saved with",
        where, normalized ? "normalized" : "unnormalized", model_normalized ? "normalized" : "unnormalized"));
}

}  // namespace mhla::state_format
