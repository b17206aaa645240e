#pragma once
// Error checks for CUDA and cuBLAS calls: a failure throws mhla::Error naming the statement,
// the file and the line, so a server gets an error back instead of a dead process.
// (Plain string building: this header is also compiled by nvcc.)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "mhla/error.hpp"

namespace mhla::cuda::detail {
[[noreturn]] inline void fail(const std::string& what, const char* stmt, const char* file, int line) {
  throw ::mhla::Error(what + " in " + stmt + " at " + file + ":" + std::to_string(line));
}
}  // namespace mhla::cuda::detail

#define MHLA_CUDA_CHECK(stmt)                                                                              \
  do {                                                                                                     \
    const cudaError_t mhla_err_ = (stmt);                                                                  \
    if (mhla_err_ != cudaSuccess)                                                                          \
      ::mhla::cuda::detail::fail(std::string("CUDA error ") + cudaGetErrorName(mhla_err_) + " (" +        \
                                     cudaGetErrorString(mhla_err_) + ")",                                  \
                                 #stmt, __FILE__, __LINE__);                                               \
  } while (0)

#define MHLA_CUBLAS_CHECK(stmt)                                                                            \
  do {                                                                                                     \
    const cublasStatus_t mhla_st_ = (stmt);                                                                \
    if (mhla_st_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      ::mhla::cuda::detail::fail(std::string("cuBLAS error ") + cublasGetStatusName(mhla_st_), #stmt,     \
                                 __FILE__, __LINE__);                                                      \
  } while (0)

// After a kernel launch: launch-configuration errors surface here.
#define MHLA_CUDA_LAUNCHED() MHLA_CUDA_CHECK(cudaGetLastError())
