#pragma once
// SwiGLU activation: out = silu(gate) ⊙ up (the product inside W_2(silu(W_1 x) ⊙ W_3 x)).
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out);  // all [N, F], out written
void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/swiglu.cu, the contracts of cpu:: above; out, dgate and dup may also
                  // be bf16 (rounded to nearest even: the dtype of kernels::matmul_operand_dtype), and
                  // so may gate and up (one dtype) and dout, read as the floats they hold
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup);
}  // namespace cuda
#endif
EG_KERNEL(swiglu_forward)
EG_KERNEL(swiglu_backward)
}  // namespace engram::kernels
