#pragma once
// Row-wise CPU kernels of the model's layers.
#include <cstddef>

namespace mhla::detail {

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for `rows` rows of width `width`.
void rms_norm(const float* x, const float* weight, size_t rows, size_t width, float eps, float* out);

// Per head: o = RMSNorm(o) * weight, then, with a gate, o *= g * sigmoid(g). o and g are
// [rows][heads*dv] with row strides; g may be null (no output gate).
void gated_head_norm(float* o, const float* g, size_t g_stride, const float* weight, size_t rows, int heads, int dv,
                     float eps);

// gu is [rows][2I] (gate then up); writes silu(gate) * up into out [rows][I].
void swiglu(const float* gu, size_t rows, size_t inter, float* out);

// C[rows][out] = A[rows][in] * W[out][in]^T (+ C when accumulate).
void linear(const float* a, size_t rows, size_t in, const float* w, size_t out, float* c, bool accumulate = false);

}  // namespace mhla::detail
