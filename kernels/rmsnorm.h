#pragma once
// RMSNorm over the last dimension: y = x · rstd · g, rstd = 1 / sqrt(mean(x²) + eps).
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
// x, y: [..., D]; g: [D]; rstd: [rows] (saved for backward). y and rstd written.
void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd);
// dx written; dg accumulated (dg += Σ_rows dy · x · rstd). dx_residual, when defined ([..., D] like
// x), is the gradient reaching x past the norm (a residual connection): dx = the norm's gradient +
// dx_residual, the float addition done as dx is written, saving a separate pass over memory.
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg, const Tensor& dx_residual = Tensor());
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/rmsnorm.cu, the contracts of cpu:: above; y may also be bf16 (rounded
                  // to nearest even: the dtype of kernels::matmul_operand_dtype)
void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg, const Tensor& dx_residual = Tensor());
}  // namespace cuda
#endif
EG_KERNEL(rmsnorm_forward)
EG_KERNEL(rmsnorm_backward)
}  // namespace engram::kernels
