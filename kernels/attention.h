#pragma once
// Causal multi-head attention core: o = softmax(q·kᵀ/√d_h + causal mask)·v, per (batch, head).
// Layout [B, T, H, d_h] for q, k, v, o (what x·Wᵀ gives after viewing [B, T, D] as heads).
// CUDA: float32 flash kernels; under MatmulPrecision::BF16 and d_h 64 or 128, tensor-core kernels
// that round q, k, v, dO, P and dS to bf16 for their products (softmax and outputs stay float32).
#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
// out written; lse [B, H, T] written: log-sum-exp of each row of scaled, masked scores.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse);
// dq, dk, dv written.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {
// Fused (flash-attention style): the [T, T] scores never reach global memory. head_dim <= 256.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse);
// Deterministic (no atomics): dK, dV per key tile and dQ per query tile are separate kernels.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace cuda
#endif
EG_KERNEL(attention_forward)
EG_KERNEL(attention_backward)
}  // namespace engram::kernels
