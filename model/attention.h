#pragma once
// Causal multi-head self-attention with RoPE (MODEL.md §2), no biases:
// q, k, v = x·W_{q,k,v}ᵀ split into heads, RoPE on q and k, o = softmax(q·kᵀ/√d_h + mask)·v,
// out = o·W_oᵀ.
#include "kernels/rope.h"
#include "runtime/config/config.h"
#include "runtime/parameters.h"

namespace engram {

class Attention {
 public:
  // Registers layers.{layer}.attn.{wq,wk,wv}.weight [D,D] (Decay, N(0, init_std)) and
  // layers.{layer}.attn.wo.weight [D,D] (Decay, N(0, init_std/√(2L))).
  Attention(const ModelConfig& cfg, int layer, ParameterRegistry& params);

  // x [B, T, D] (already normed) -> [B, T, D], plus residual when given (the block's residual
  // stream, added by the output product as it writes: no separate pass); saves what backward needs.
  Tensor forward(const Tensor& x, const Tensor& residual = Tensor());
  // dy [B, T, D] -> dx [B, T, D]; accumulates the four weight gradients.
  Tensor backward(const Tensor& dy);

 private:
  // RoPE tables covering at least `seq_len` positions (rebuilt only when a longer sequence comes).
  const kernels::RopeTables& rope_tables(int64_t seq_len, Device device);  // made on first need
  // W_q, W_k and W_v copied into one [3D, D] float32 matrix: the backward's dx is one product with it.
  Tensor stacked_qkv() const;

  int64_t n_heads_, head_dim_;
  double rope_theta_;
  Parameter& wq_;
  Parameter& wk_;
  Parameter& wv_;
  Parameter& wo_;
  kernels::RopeTables rope_;
  // As the products take them (kernels::matmul_operand, rounded once per forward): the input
  // [B, T, D], W_q, W_k and W_v stacked [3D, D] (only when rounded: float32 operands are the
  // parameters, stacked by the backward for its one product), and W_o, for backward.
  Tensor x_, wqkv_operand_, wo_operand_;
  // q_, k_ after RoPE; all [B, T, H, d_h] except lse_ [B, H, T]; q_, k_, v_, o_ in the dtype the
  // attention reads (kernels::attention_operand_dtype), which its tensor-core kernels also write o in.
  Tensor q_, k_, v_, o_, lse_;
};

}  // namespace engram
