#pragma once
// Adam updates (MODEL.md §6), float32 state. For each element, with g = grad · grad_scale:
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   p = p − lr·wd·p − lr · (m / (1−β1^step)) / (sqrt(v / (1−β2^step)) + eps)
// (decoupled weight decay applied to the pre-update value; step is 1-based).
#include <cmath>

#include "kernels/dispatch.h"

namespace engram::kernels {

struct AdamStep {
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;         // global optimizer step, 1-based, for bias correction
  float grad_scale = 1.0f;  // clipping factor folded into the update
};

// Per-call constants: the bias corrections are computed once, in double, then rounded to float.
struct AdamCoeffs {
  float beta1, beta2, one_minus_beta1, one_minus_beta2;
  float bias_correction1, bias_correction2;  // 1 − β^step
  float lr, decay;                           // decay = lr·wd
  float eps, grad_scale;
};
AdamCoeffs adam_coeffs(const AdamStep& s);

// The update of one element, all in float, in exactly this order (every backend runs this code):
//   g = grad·grad_scale
//   m = β1·m + (1−β1)·g                  v = β2·v + (1−β2)·g·g
//   m̂ = m / bc1                          v̂ = v / bc2
//   p = p − decay·p − lr·(m̂ / (sqrt(v̂) + eps))
EG_HOST_DEVICE inline void adam_element(float& p, float grad, float& m, float& v, const AdamCoeffs& c) {
  const float g = grad * c.grad_scale;
  m = c.beta1 * m + c.one_minus_beta1 * g;
  v = c.beta2 * v + c.one_minus_beta2 * g * g;
  const float m_hat = m / c.bias_correction1;
  const float v_hat = v / c.bias_correction2;
  p = p - c.decay * p - c.lr * (m_hat / (sqrtf(v_hat) + c.eps));
}

namespace cpu {
// Dense AdamW: param, grad, m, v same shape.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStep& s);
// Lazy row-sparse Adam: only the listed rows (i64 local row indices, ascending) update their
// moments and values, from row_grads [U, C]; every other row stays bit-identical.
void sparse_adam_update(Tensor& table, const Tensor& rows, const Tensor& row_grads, Tensor& m, Tensor& v,
                        const AdamStep& s);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/adam.cu, the contracts of cpu:: above
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStep& s);
void sparse_adam_update(Tensor& table, const Tensor& rows, const Tensor& row_grads, Tensor& m, Tensor& v,
                        const AdamStep& s);
}  // namespace cuda
#endif
EG_KERNEL(adamw_update)
EG_KERNEL(sparse_adam_update)
}  // namespace engram::kernels
