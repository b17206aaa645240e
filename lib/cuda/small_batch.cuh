#pragma once
// Matrix-vector products for the decode step of a few sequences (B <= 8 rows). At these sizes a
// cuBLAS product plus the row kernels around it cost a few microseconds each, several times
// what reading the weights takes; here one launch reads each weight once with 16-byte loads,
// with the RMSNorm in front and the step that consumes the product fused in. The launch shape
// depends only on the sizes and the device and nothing is allocated, so the launch can be
// captured in a CUDA graph; sums are taken in a fixed order, so results repeat bit for bit.
#include <cuda_runtime.h>

namespace mhla::cuda {

constexpr int kSmallBatchMax = 8;

// What becomes of y[b][n] = sum_k W[n][k] * in[b][k]. Outputs are dense row-major [B][...].
enum class SmallBatchEpilogue {
  store_t,    // out_t[b][n] = y, in T
  store_f32,  // out_f32[b][n] = y (logits)
  add_f32,    // out_f32[b][n] += y (the fp32 residual stream)
  split,      // rows [0, n0) to out0 [B][n0], [n0, n1) to out1 [B][n1 - n0], [n1, n2) to out2
              // [B][n2 - n1], [n2, N) to out3 [B][N - n2], in T; an empty part's pointer may be null
  swiglu,     // W is [gate; up], N = 2I: out_t[b][j] = silu(y[b][j]) * y[b][I + j] for j < I, in T
};

template <class T>
struct SmallBatchArgs {
  int batch = 0, n = 0, k = 0;  // B, output rows N, inner size K
  const T* w = nullptr;         // [N][K] row-major (the PyTorch Linear layout)
  // The input rows [B][K]: either rows `in` already in T, or fp32 rows x under an RMSNorm, as
  // rms_norm_rows (x * rsqrt(mean(x^2) + eps) * norm_weight) followed by the product, except
  // that the row scale is applied to the sums: y[b][n] = rsqrt(mean(x[b]^2) + eps) *
  // sum_k W[n][k] * T(x[b][k] * norm_weight[k]). In fp16, whose range x * norm_weight may pass,
  // the rows are staged as T(2^e x[b][k] * norm_weight[k]) with 2^e the power of two at or below
  // the row scale, and the sums take the rest of it. Exactly one of x (with norm_weight) and in
  // is set.
  const float* x = nullptr;
  const float* norm_weight = nullptr;  // [K]
  float eps = 0.0f;
  const T* in = nullptr;
  SmallBatchEpilogue epilogue = SmallBatchEpilogue::store_t;
  T* out_t = nullptr;          // store_t [B][N], swiglu [B][N/2]
  float* out_f32 = nullptr;    // store_f32, add_f32 [B][N]
  int n0 = 0, n1 = 0, n2 = 0;  // split: 0 <= n0 <= n1 <= n2 <= N
  T* out0 = nullptr;
  T* out1 = nullptr;
  T* out2 = nullptr;
  T* out3 = nullptr;
};

// Whether B rows of width K fit this path: 1 <= B <= 8, K a multiple of 16 bytes of T (8 bf16
// or fp16, or 4 floats), the B rows in T within the kernel's shared memory (192 KiB).
template <class T>
bool small_batch_supported(int batch, int k);

// One launch on `s`. Besides the sizes, w, x, norm_weight and in must be 16-byte aligned;
// anything unsupported throws mhla::Error before launching. B = 0 launches nothing.
// The launch is a programmatic dependent one: the kernel may start before the previous kernel
// on `s` ends and reads its first weights then, waiting for that kernel before it reads
// anything else or writes. So w must not be written by the kernel just before.
template <class T>
void small_batch_gemv(const SmallBatchArgs<T>& a, cudaStream_t s);

}  // namespace mhla::cuda
