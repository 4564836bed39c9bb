#include "model/rmsnorm.h"

namespace engram {

RMSNormModule::RMSNormModule(ParameterRegistry& params, const std::string& name, int64_t dim, float eps)
    : gain_(params.add(name, {dim}, OptimGroup::NoDecay, {InitKind::Ones})), eps_(eps) {}

Tensor RMSNormModule::forward(const Tensor& x, DType y_dtype) {
  x_ = x;
  rstd_ = Tensor::empty({x.rows()}, DType::F32, x.device());
  Tensor y = Tensor::empty(x.shape(), y_dtype, x.device());
  kernels::rmsnorm_forward(x, gain_.value, eps_, y, rstd_);
  return y;
}

Tensor RMSNormModule::backward(const Tensor& dy, const Tensor& dx_residual) {
  Tensor dx = Tensor::empty(dy.shape(), DType::F32, dy.device());
  kernels::rmsnorm_backward(dy, x_, gain_.value, rstd_, dx, gain_.grad, dx_residual);
  return dx;
}

}  // namespace engram
