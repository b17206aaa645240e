#pragma once
// Whether saved contents belong to a model as loaded: the same fingerprint, and the same engine
// options that change the math. Each refusal names the first difference and what to do.
#include <string_view>

#include "mhla/model.hpp"

namespace mhla::state_format {

void check_same_model(const ModelFingerprint& saved, std::string_view saved_directory, const Model& model,
                      std::string_view where);
// `model_normalized`: whether the model's states carry normalizers (from any state it made).
void check_same_math(int block_size, bool normalized, const Model& model, bool model_normalized,
                     std::string_view where);

}  // namespace mhla::state_format
