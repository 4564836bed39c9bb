#pragma once
// The Engram gate (MODEL.md §4.3): s = <q̂, k̂>/√D, α = sigmoid(sign(s)·sqrt(max(|s|, 1e-6))),
// u = α·v, where q̂ = RMSNorm(h; g_q) and k̂ = RMSNorm(k; g_k) are computed by the caller.
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
// qn, kn, v, u: [N, D]; score, alpha: [N]. score, alpha, u written.
void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, Tensor& score, Tensor& alpha,
                         Tensor& u);
// dqn, dkn, dv written. The signed square root has zero gradient where |s| <= 1e-6.
void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v,
                          const Tensor& score, const Tensor& alpha, Tensor& dqn, Tensor& dkn, Tensor& dv);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/engram_gate.cu, the contracts of cpu:: above
void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, Tensor& score, Tensor& alpha,
                         Tensor& u);
void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v,
                          const Tensor& score, const Tensor& alpha, Tensor& dqn, Tensor& dkn, Tensor& dv);
}  // namespace cuda
#endif
EG_KERNEL(engram_gate_forward)
EG_KERNEL(engram_gate_backward)
}  // namespace engram::kernels
