#include "model/attention.h"

#include <cmath>
#include <string>

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"

namespace engram {

namespace {

Parameter& add_projection(ParameterRegistry& params, int layer, const char* name, int64_t d_model,
                          double std) {
  return params.add("layers." + std::to_string(layer) + ".attn." + name + ".weight", {d_model, d_model},
                    OptimGroup::Decay, {InitKind::Normal, std});
}

}  // namespace

Attention::Attention(const ModelConfig& cfg, int layer, ParameterRegistry& params)
    : n_heads_(cfg.n_heads()),
      head_dim_(head_dim(cfg)),
      rope_theta_(cfg.rope_theta()),
      wq_(add_projection(params, layer, "wq", cfg.d_model(), cfg.init_std())),
      wk_(add_projection(params, layer, "wk", cfg.d_model(), cfg.init_std())),
      wv_(add_projection(params, layer, "wv", cfg.d_model(), cfg.init_std())),
      wo_(add_projection(params, layer, "wo", cfg.d_model(),
                         cfg.init_std() / std::sqrt(2.0 * cfg.n_layers()))) {}

const kernels::RopeTables& Attention::rope_tables(int64_t seq_len, Device device) {
  if (!rope_.cos.defined() || rope_.cos.dim(0) < seq_len || rope_.cos.device() != device) {
    const kernels::RopeTables host = kernels::make_rope_tables(seq_len, head_dim_, rope_theta_);
    rope_ = {host.cos.to(device), host.sin.to(device)};
  }
  return rope_;
}

Tensor Attention::stacked_qkv() const {
  const int64_t d = wq_.value.dim(0);
  Tensor w_qkv = Tensor::empty({3 * d, d}, DType::F32, wq_.value.device());
  w_qkv.slice(0, d).copy_from(wq_.value);
  w_qkv.slice(d, 2 * d).copy_from(wk_.value);
  w_qkv.slice(2 * d, 3 * d).copy_from(wv_.value);
  return w_qkv;
}

Tensor Attention::forward(const Tensor& x, const Tensor& residual) {
  EG_ASSERT(x.ndim() == 3, "attention input must be [B, T, D], got ", shape_str(x.shape()));
  const int64_t batch = x.dim(0), seq = x.dim(1);
  const Shape heads_shape{batch, seq, n_heads_, head_dim_};
  const kernels::RopeTables& rope = rope_tables(seq, x.device());
  x_ = kernels::matmul_operand(x);
  // Under rounded operands W_q, W_k and W_v are rounded once, stacked, and kept for the backward's
  // product over the whole; float32 operands are the parameters themselves (nothing kept).
  const int64_t d = x.dim(2);
  wqkv_operand_ =
      kernels::matmul_operand_dtype(x.device()) == DType::F32 ? Tensor() : kernels::matmul_operand(stacked_qkv());
  const Tensor wq = wqkv_operand_.defined() ? wqkv_operand_.slice(0, d) : wq_.value;
  const Tensor wk = wqkv_operand_.defined() ? wqkv_operand_.slice(d, 2 * d) : wk_.value;
  const Tensor wv = wqkv_operand_.defined() ? wqkv_operand_.slice(2 * d, 3 * d) : wv_.value;
  wo_operand_ = kernels::matmul_operand(wo_.value);
  // q and k are rotated in f32, then written in the dtype the attention reads (bf16 for the CUDA
  // tensor-core kernels: rounded once rotated, where those kernels would round them); v goes there
  // straight from its product.
  const DType operands = kernels::attention_operand_dtype(x.device(), head_dim_);
  Tensor q_rows = Tensor::empty(x.shape(), DType::F32, x.device());
  Tensor k_rows = Tensor::empty(x.shape(), DType::F32, x.device());
  v_ = Tensor::empty(x.shape(), operands, x.device());
  kernels::gemm(x_, false, wq, true, q_rows);
  kernels::gemm(x_, false, wk, true, k_rows);
  kernels::gemm(x_, false, wv, true, v_);
  q_ = Tensor::empty(heads_shape, operands, x.device());
  k_ = Tensor::empty(heads_shape, operands, x.device());
  v_ = v_.view(heads_shape);
  kernels::rope_apply_to(q_rows.view(heads_shape), rope.cos, rope.sin, false, q_);
  kernels::rope_apply_to(k_rows.view(heads_shape), rope.cos, rope.sin, false, k_);

  // o only feeds products (here and W_O's gradient) and the backward's row deltas: with bf16 operands
  // the attention writes it in bf16, what those products take.
  o_ = Tensor::empty(heads_shape, operands, x.device());
  lse_ = Tensor::empty({batch, n_heads_, seq}, DType::F32, x.device());
  kernels::attention_forward(q_, k_, v_, o_, lse_);

  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  if (residual.defined()) {
    kernels::gemm_plus(o_.view(x.shape()), false, wo_operand_, true, residual, y);
  } else {
    kernels::gemm(o_.view(x.shape()), false, wo_operand_, true, y);
  }
  return y;
}

Tensor Attention::backward(const Tensor& dy_in) {
  const Shape& model_shape = x_.shape();
  const Tensor dy = kernels::matmul_operand(dy_in);
  const Tensor o = o_.view(model_shape);
  kernels::gemm(dy, true, o, false, wo_.grad, 1.0f, 1.0f);
  Tensor d_o = Tensor::empty(q_.shape(), q_.dtype(), dy.device());  // the attention's operand dtype
  Tensor d_o_rows = d_o.view(model_shape);
  kernels::gemm(dy, false, wo_operand_, false, d_o_rows);

  Tensor dq = Tensor::empty(q_.shape(), DType::F32, dy.device());
  Tensor dk = Tensor::empty(k_.shape(), DType::F32, dy.device());
  Tensor dv = Tensor::empty(v_.shape(), o_.dtype(), dy.device());  // bf16 with bf16 operands, as o
  kernels::attention_backward(d_o, q_, k_, v_, o_, lse_, dq, dk, dv);
  // The gradients of q, k and v side by side, [N, 3D] in the dtype the products take: RoPE's
  // backward rotates dq and dk back by the same angle into their columns (rounded once rotated, as
  // matmul_operand would), and dv joins them. Then one product makes dx (no sums read back and
  // written again) and one the three weight gradients.
  const int64_t n = model_shape[0] * model_shape[1], d = model_shape[2];
  const kernels::RopeTables& rope = rope_tables(model_shape[1], dy.device());
  Tensor d_qkv = Tensor::empty({n, 3 * d}, kernels::matmul_operand_dtype(dy.device()), dy.device());
  kernels::rope_apply_into_columns(dq, rope.cos, rope.sin, true, d_qkv, 0);
  kernels::rope_apply_into_columns(dk, rope.cos, rope.sin, true, d_qkv, d);
  kernels::copy_into_columns(kernels::matmul_operand(dv.view({n, d})), d_qkv, 2 * d);
  Tensor dw_qkv = Tensor::empty({3 * d, d}, DType::F32, dy.device());
  kernels::gemm(d_qkv, true, x_, false, dw_qkv);
  kernels::add_(wq_.grad, dw_qkv.slice(0, d));
  kernels::add_(wk_.grad, dw_qkv.slice(d, 2 * d));
  kernels::add_(wv_.grad, dw_qkv.slice(2 * d, 3 * d));
  Tensor dx = Tensor::empty(model_shape, DType::F32, dy.device());
  kernels::gemm(d_qkv, false, wqkv_operand_.defined() ? wqkv_operand_ : stacked_qkv(), false, dx);
  return dx;
}

}  // namespace engram
