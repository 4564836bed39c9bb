#pragma once
// Adam updates (MODEL.md §6), float32 state. For each element, with g = grad · grad_scale:
//   m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
//   p = p − lr·wd·p − lr · (m / (1−β1^step)) / (sqrt(v / (1−β2^step)) + eps)
// (decoupled weight decay applied to the pre-update value; step is 1-based).
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

namespace cpu {
// Dense AdamW: param, grad, m, v same shape.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStep& s);
// Lazy row-sparse Adam: only the listed rows (i64 local row indices, ascending) update their
// moments and values, from row_grads [U, C]; every other row stays bit-identical.
void sparse_adam_update(Tensor& table, const Tensor& rows, const Tensor& row_grads, Tensor& m, Tensor& v,
                        const AdamStep& s);
}  // namespace cpu
EG_KERNEL(adamw_update)
EG_KERNEL(sparse_adam_update)
}  // namespace engram::kernels
