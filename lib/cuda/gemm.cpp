#include "cuda/check.hpp"
#include "cuda/gemm.hpp"

namespace mhla::cuda {

namespace {
cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }
}  // namespace

void gemm(cublasHandle_t handle, const RowMajorGemm& g, cudaDataType_t in_type, cudaDataType_t out_type) {
  if (g.batch <= 0 || g.m <= 0 || g.n <= 0 || g.k <= 0) return;
  MHLA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, op(g.trans_b), op(g.trans_a), g.n, g.m, g.k, &g.alpha, g.b, in_type, static_cast<int>(g.ldb), g.stride_b,
      g.a, in_type, static_cast<int>(g.lda), g.stride_a, &g.beta, g.c, out_type, static_cast<int>(g.ldc), g.stride_c,
      g.batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gemm_pointers(cublasHandle_t handle, const RowMajorGemm& g, const void* const* table, cudaDataType_t in_type,
                   cudaDataType_t out_type) {
  if (g.batch <= 0 || g.m <= 0 || g.n <= 0 || g.k <= 0) return;
  const void* const* a = table;
  const void* const* b = table + g.batch;
  void* const* c = const_cast<void* const*>(table + 2 * g.batch);
  MHLA_CUBLAS_CHECK(cublasGemmBatchedEx(handle, op(g.trans_b), op(g.trans_a), g.n, g.m, g.k, &g.alpha, b, in_type,
                                        static_cast<int>(g.ldb), a, in_type, static_cast<int>(g.lda), &g.beta, c,
                                        out_type, static_cast<int>(g.ldc), g.batch, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT));
}

}  // namespace mhla::cuda
