#pragma once
// Softmax cross-entropy over the vocabulary, fused with its gradient.
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
// logits [N, V], targets i32 [N] in [0, V). losses [N] written: logsumexp(logits_i) − logits_i[y_i].
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& losses);
// Also writes dlogits = grad_scale · (softmax(logits) − onehot(y)); dlogits may be logits itself.
void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor& losses,
                                    Tensor& dlogits);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/cross_entropy.cu, the contracts of cpu:: above; dlogits may also be
                  // bf16 (rounded to nearest even: the dtype of kernels::matmul_operand_dtype)
void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& losses);
void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor& losses,
                                    Tensor& dlogits);
}  // namespace cuda
#endif
EG_KERNEL(cross_entropy_forward)
EG_KERNEL(cross_entropy_forward_backward)
}  // namespace engram::kernels
