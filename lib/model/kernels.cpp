#include "model/kernels.hpp"

#include <cblas.h>

#include <cmath>

namespace mhla::detail {

void rms_norm(const float* x, const float* weight, size_t rows, size_t width, float eps, float* out) {
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * width;
    double ss = 0;
    for (size_t j = 0; j < width; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(width) + eps));
    float* o = out + r * width;
    for (size_t j = 0; j < width; ++j) o[j] = xr[j] * inv * weight[j];
  }
}

void gated_head_norm(float* o, const float* g, size_t g_stride, const float* weight, size_t rows, int heads, int dv,
                     float eps) {
  const size_t width = static_cast<size_t>(heads) * dv;
  for (size_t r = 0; r < rows; ++r)
    for (int h = 0; h < heads; ++h) {
      float* oh = o + r * width + static_cast<size_t>(h) * dv;
      rms_norm(oh, weight, 1, dv, eps, oh);
      if (!g) continue;
      const float* gh = g + r * g_stride + static_cast<size_t>(h) * dv;
      for (int x = 0; x < dv; ++x) oh[x] *= gh[x] / (1.0f + std::exp(-gh[x]));
    }
}

void swiglu(const float* gu, size_t rows, size_t inter, float* out) {
  for (size_t r = 0; r < rows; ++r) {
    const float* gate = gu + r * 2 * inter;
    const float* up = gate + inter;
    float* o = out + r * inter;
    for (size_t j = 0; j < inter; ++j) o[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
  }
}

void linear(const float* a, size_t rows, size_t in, const float* w, size_t out, float* c, bool accumulate) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows), static_cast<int>(out),
              static_cast<int>(in), 1.0f, a, static_cast<int>(in), w, static_cast<int>(in), accumulate ? 1.0f : 0.0f, c,
              static_cast<int>(out));
}

}  // namespace mhla::detail
