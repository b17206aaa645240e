#pragma once
// The one dispatch from a Precision to code templated on its storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "mhla/cuda.hpp"
#include "mhla/error.hpp"

namespace mhla::cuda {

// Returns f(std::type_identity<T>{}) with T the storage type of `p`: float, __nv_bfloat16 or
// __half.
template <class F>
decltype(auto) with_storage_type(Precision p, F&& f) {
  switch (p) {
    case Precision::f32: return f(std::type_identity<float>{});
    case Precision::bf16: return f(std::type_identity<__nv_bfloat16>{});
    case Precision::f16: return f(std::type_identity<__half>{});
  }
  throw Error("unknown precision");
}

}  // namespace mhla::cuda
