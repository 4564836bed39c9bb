#pragma once
// RMSNorm module: a gain vector registered as `<name>` (NoDecay, init 1) around the rmsnorm kernels.
#include <string>

#include "kernels/rmsnorm.h"
#include "runtime/parameters.h"

namespace engram {

class RMSNormModule {
 public:
  RMSNormModule(ParameterRegistry& params, const std::string& name, int64_t dim, float eps);

  // x [..., D] -> y (same shape), saving x and rstd for backward (not y). y is f32, or, with
  // `y_dtype` = kernels::matmul_operand_dtype, written in the dtype products take when only products
  // read it (bf16 under bf16 matmuls on CUDA: no f32 copy to round).
  Tensor forward(const Tensor& x, DType y_dtype = DType::F32);
  // Returns dx, plus `dx_residual` when given (the gradient reaching x past the norm); accumulates
  // the gain gradient.
  Tensor backward(const Tensor& dy, const Tensor& dx_residual = Tensor());

 private:
  Parameter& gain_;
  float eps_;
  Tensor x_, rstd_;
};

}  // namespace engram
