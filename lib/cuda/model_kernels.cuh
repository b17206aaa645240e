#pragma once
// Launchers of the row-wise kernels of the model's layers on the GPU (the CPU versions are in
// lib/model/kernels.hpp). T is the activation type (float, __nv_bfloat16 or __half); the
// residual stream and norm weights are fp32.
#include <cuda_runtime.h>

namespace mhla::cuda {

// x[r] = E[tokens[r]] for `rows` rows of width `width`.
template <class T>
void embed_rows(const int* tokens, const T* embeddings, long long rows, int width, float* x, cudaStream_t s);

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight; x rows are `x_stride` apart.
template <class T>
void rms_norm_rows(const float* x, long long x_stride, const float* weight, long long rows, int width, float eps, T* out,
                   cudaStream_t s);

// Splits the fused projection rows [q | k | v | g] (width `stride`) into dense q, k, v.
template <class T>
void split_qkv(const T* proj, long long rows, int stride, int qw, int kw, int vw, T* q, T* k, T* v, cudaStream_t s);

// Per head: out = RMSNorm(o) * weight, times g * sigmoid(g) when g is given (rows `g_stride`
// apart). o is fp32 [rows][heads*dv].
template <class T>
void gated_head_norm(const float* o, const T* g, long long g_stride, const float* weight, long long rows, int heads,
                     int dv, float eps, T* out, cudaStream_t s);

// gu is [rows][2I] (gate then up); out[r][j] = silu(gate) * up.
template <class T>
void swiglu_rows(const T* gu, long long rows, int inter, T* out, cudaStream_t s);

}  // namespace mhla::cuda
