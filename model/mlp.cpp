#include "model/mlp.h"

#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "kernels/swiglu.h"

namespace engram {

SwiGluMlp::SwiGluMlp(ParameterRegistry& params, const std::string& prefix, int64_t d_model, int64_t d_ff,
                     double in_std, double out_std)
    : w1_(params.add(prefix + ".w1.weight", {d_ff, d_model}, OptimGroup::Decay, {InitKind::Normal, in_std})),
      w3_(params.add(prefix + ".w3.weight", {d_ff, d_model}, OptimGroup::Decay, {InitKind::Normal, in_std})),
      w2_(params.add(prefix + ".w2.weight", {d_model, d_ff}, OptimGroup::Decay, {InitKind::Normal, out_std})) {}

Tensor SwiGluMlp::forward(const Tensor& x, const Tensor& residual) {
  const int64_t n = x.rows(), d_ff = w1_.value.dim(0);
  x_ = kernels::matmul_operand(x);
  w1_operand_ = kernels::matmul_operand(w1_.value);
  w3_operand_ = kernels::matmul_operand(w3_.value);
  w2_operand_ = kernels::matmul_operand(w2_.value);
  // gate and up only feed the SwiGLU, which computes in f32: under bf16 matmuls the products write
  // them in bf16 (half the traffic, as autocast does); the SwiGLU writes act in the dtype the next
  // product takes (no f32 copy to round).
  const DType hidden_dtype = kernels::matmul_operand_dtype(x.device());
  gate_ = Tensor::empty({n, d_ff}, hidden_dtype, x.device());
  up_ = Tensor::empty({n, d_ff}, hidden_dtype, x.device());
  act_ = Tensor::empty({n, d_ff}, hidden_dtype, x.device());
  kernels::gemm(x_, false, w1_operand_, true, gate_);
  kernels::gemm(x_, false, w3_operand_, true, up_);
  kernels::swiglu_forward(gate_, up_, act_);
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  if (residual.defined()) {
    kernels::gemm_plus(act_, false, w2_operand_, true, residual, y);
  } else {
    kernels::gemm(act_, false, w2_operand_, true, y);
  }
  return y;
}

Tensor SwiGluMlp::backward(const Tensor& dy) {
  Tensor dx = Tensor::empty(x_.shape(), DType::F32, dy.device());
  backward_into(dy, dx, 0.0f);
  return dx;
}

void SwiGluMlp::backward_add_to(const Tensor& dy, Tensor& dx) { backward_into(dy, dx, 1.0f); }

void SwiGluMlp::backward_into(const Tensor& dy_in, Tensor& dx, float beta) {
  const Shape& hidden = gate_.shape();
  const Tensor dy = kernels::matmul_operand(dy_in);
  Tensor dact = Tensor::empty(hidden, act_.dtype(), dy.device());  // only the SwiGLU backward reads it
  kernels::gemm(dy, false, w2_operand_, false, dact);
  kernels::gemm(dy, true, act_, false, w2_.grad, 1.0f, 1.0f);

  Tensor dgate = Tensor::empty(hidden, act_.dtype(), dy.device());
  Tensor dup = Tensor::empty(hidden, act_.dtype(), dy.device());
  kernels::swiglu_backward(dact, gate_, up_, dgate, dup);
  kernels::gemm(dgate, true, x_, false, w1_.grad, 1.0f, 1.0f);
  kernels::gemm(dup, true, x_, false, w3_.grad, 1.0f, 1.0f);

  kernels::gemm(dgate, false, w1_operand_, false, dx, 1.0f, beta);
  kernels::gemm(dup, false, w3_operand_, false, dx, 1.0f, 1.0f);
}

}  // namespace engram
