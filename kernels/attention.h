#pragma once
// Causal multi-head attention core: o = softmax(q·kᵀ/√d_h + causal mask)·v, per (batch, head).
// Layout [B, T, H, d_h] for q, k, v, o (what x·Wᵀ gives after viewing [B, T, D] as heads).
// CUDA: float32 flash kernels; under MatmulPrecision::BF16 and d_h 64 or 128 (where the GPU has the
// shared memory), tensor-core kernels
// that read q, k, v, dO in bf16 (rounding f32 ones to a copy first) and round P and dS to bf16 for
// their products (softmax and outputs stay float32).
#include "kernels/dispatch.h"
#include "kernels/matmul_precision.h"

namespace engram::kernels {

#ifdef ENGRAM_HAVE_CUDA
namespace cuda {
// Whether this process's GPU gives a block the shared memory the tensor-core kernels of head_dim (64
// or 128) need: at 128 they need up to 136 KB, more than sm_86/89 GPUs (RTX 4090: 99 KB) allow.
bool tensor_core_attention_fits(int64_t head_dim);
}  // namespace cuda
#endif

// The dtype to give the attention q, k, v and dout in on `device`, heads of head_dim: BF16 where the
// CUDA tensor-core kernels run (MatmulPrecision::BF16, head_dim 64 or 128, and the GPU has the shared
// memory they need), which then skip their own rounding copies; F32 elsewhere, the only dtype the CPU
// and the float32 kernels take.
// The head dims the CUDA tensor-core kernels have instances for.
inline bool tensor_core_attention_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }
inline DType attention_operand_dtype(Device device, int64_t head_dim) {
  if (matmul_operand_dtype(device) != DType::BF16 || !tensor_core_attention_head_dim(head_dim)) return DType::F32;
#ifdef ENGRAM_HAVE_CUDA
  if (!cuda::tensor_core_attention_fits(head_dim)) return DType::F32;
#endif
  return DType::BF16;
}
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
// q, k, v (and dout) f32, or all bf16 where attention_operand_dtype says BF16; with bf16 operands,
// out (and dv) may be bf16 too, rounded to nearest even (what their products take; the backward's row
// deltas then read that o). The tensor-core kernels store two adjacent columns at once: out, dq, dk
// and dv must start at an even element (fresh tensors do; an odd view is an error, not a slow path).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse);
// Deterministic (no atomics): dK, dV per key tile and dQ per query tile are separate kernels.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace cuda
#endif
EG_KERNEL(attention_forward)
EG_KERNEL(attention_backward)
}  // namespace engram::kernels
