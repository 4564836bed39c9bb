#pragma once
// RMSNorm over the last dimension: y = x · rstd · g, rstd = 1 / sqrt(mean(x²) + eps).
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
// x, y: [..., D]; g: [D]; rstd: [rows] (saved for backward). y and rstd written.
void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd);
// dx written; dg accumulated (dg += Σ_rows dy · x · rstd).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/rmsnorm.cu, the contracts of cpu:: above
void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg);
}  // namespace cuda
#endif
EG_KERNEL(rmsnorm_forward)
EG_KERNEL(rmsnorm_backward)
}  // namespace engram::kernels
