#pragma once
// Row-major strided-batched matrix products on cuBLAS (which is column-major): row-major
// C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the operands swap.
#include <cublas_v2.h>

#include "mhla/cuda.hpp"
#include "mhla/error.hpp"

namespace mhla::cuda {

struct RowMajorGemm {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;  // C is m x n, the inner dimension k
  const void* a = nullptr;
  long long lda = 0, stride_a = 0;
  const void* b = nullptr;
  long long ldb = 0, stride_b = 0;
  void* c = nullptr;
  long long ldc = 0, stride_c = 0;
  int batch = 1;
  float alpha = 1.0f, beta = 0.0f;
};

// Inputs of `in_type` (CUDA_R_32F, CUDA_R_16BF or CUDA_R_16F), output of `out_type`, fp32
// accumulation.
void gemm(cublasHandle_t handle, const RowMajorGemm& g, cudaDataType_t in_type, cudaDataType_t out_type);

// As gemm, with one pointer per batch entry: `table` on the device holds the batch's A
// pointers, then its B pointers, then its C pointers (g.batch each; g.a, g.b, g.c unused).
void gemm_pointers(cublasHandle_t handle, const RowMajorGemm& g, const void* const* table, cudaDataType_t in_type,
                   cudaDataType_t out_type);

// The cuBLAS type of a precision's inputs.
inline cudaDataType_t cuda_type(Precision p) {
  switch (p) {
    case Precision::f32: return CUDA_R_32F;
    case Precision::bf16: return CUDA_R_16BF;
    case Precision::f16: return CUDA_R_16F;
  }
  throw Error("unknown precision");
}

}  // namespace mhla::cuda
