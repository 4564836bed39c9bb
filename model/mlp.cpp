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

Tensor SwiGluMlp::forward(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.device());
  forward_into(x, y, 0.0f);
  return y;
}

void SwiGluMlp::forward_add_to(const Tensor& x, Tensor& y) { forward_into(x, y, 1.0f); }

Tensor SwiGluMlp::backward(const Tensor& dy) {
  Tensor dx = Tensor::empty(x_.shape(), DType::F32, dy.device());
  backward_into(dy, dx, 0.0f);
  return dx;
}

void SwiGluMlp::backward_add_to(const Tensor& dy, Tensor& dx) { backward_into(dy, dx, 1.0f); }

void SwiGluMlp::forward_into(const Tensor& x, Tensor& y, float beta) {
  const int64_t n = x.rows(), d_ff = w1_.value.dim(0);
  x_ = kernels::matmul_operand(x);
  w1_operand_ = kernels::matmul_operand(w1_.value);
  w3_operand_ = kernels::matmul_operand(w3_.value);
  w2_operand_ = kernels::matmul_operand(w2_.value);
  gate_ = Tensor::empty({n, d_ff}, DType::F32, x.device());
  up_ = Tensor::empty({n, d_ff}, DType::F32, x.device());
  // Written straight in the dtype the products take (no f32 copy to round).
  act_ = Tensor::empty({n, d_ff}, kernels::matmul_operand_dtype(x.device()), x.device());
  kernels::gemm(x_, false, w1_operand_, true, gate_);
  kernels::gemm(x_, false, w3_operand_, true, up_);
  kernels::swiglu_forward(gate_, up_, act_);
  kernels::gemm(act_, false, w2_operand_, true, y, 1.0f, beta);
}

void SwiGluMlp::backward_into(const Tensor& dy_in, Tensor& dx, float beta) {
  const Shape& hidden = gate_.shape();
  const Tensor dy = kernels::matmul_operand(dy_in);
  Tensor dact = Tensor::empty(hidden, DType::F32, dy.device());
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
