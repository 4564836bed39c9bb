#pragma once
// Depthwise causal dilated convolution along time (the Engram short conv, MODEL.md §4.3):
// y[b,t,:] = Σ_{i<W} w[i,:] ⊙ x[b, t − (W−1−i)·dilation, :], positions before 0 are zero.
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
void causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, Tensor& y);  // x,y [B,T,D], w [W,D]
// dx written, dw accumulated.
void causal_conv_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int dilation, Tensor& dx, Tensor& dw);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/conv.cu, the contracts of cpu:: above
void causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, Tensor& y);
void causal_conv_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int dilation, Tensor& dx, Tensor& dw);
}  // namespace cuda
#endif
EG_KERNEL(causal_conv_forward)
EG_KERNEL(causal_conv_backward)
}  // namespace engram::kernels
