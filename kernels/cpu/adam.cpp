#include "kernels/adam.h"

#include <cmath>

namespace engram::kernels::cpu {

namespace {

// Per-call constants: the bias corrections are computed once, in double, then rounded to float.
struct AdamCoeffs {
  float beta1, beta2, one_minus_beta1, one_minus_beta2;
  float bias_correction1, bias_correction2;  // 1 − β^step
  float lr, decay;                           // decay = lr·wd
  float eps, grad_scale;
};

AdamCoeffs adam_coeffs(const AdamStep& s) {
  EG_CHECK(s.step >= 1, "adam: step = ", s.step, " must be >= 1 (1-based)");
  const double step = static_cast<double>(s.step);
  return {s.beta1,
          s.beta2,
          1.0f - s.beta1,
          1.0f - s.beta2,
          static_cast<float>(1.0 - std::pow(static_cast<double>(s.beta1), step)),
          static_cast<float>(1.0 - std::pow(static_cast<double>(s.beta2), step)),
          s.lr,
          s.lr * s.weight_decay,
          s.eps,
          s.grad_scale};
}

// The update of n contiguous elements, all in float, in exactly this order:
//   g = grad·grad_scale
//   m = β1·m + (1−β1)·g                  v = β2·v + (1−β2)·g·g
//   m̂ = m / bc1                          v̂ = v / bc2
//   p = p − decay·p − lr·(m̂ / (sqrt(v̂) + eps))
// with (1−β1), (1−β2), bc1 = 1−β1^step, bc2 = 1−β2^step and decay = lr·wd rounded to float first.
void adam_apply(float* p, const float* grad, float* m, float* v, int64_t n, const AdamCoeffs& c) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * c.grad_scale;
    m[i] = c.beta1 * m[i] + c.one_minus_beta1 * g;
    v[i] = c.beta2 * v[i] + c.one_minus_beta2 * g * g;
    const float m_hat = m[i] / c.bias_correction1;
    const float v_hat = v[i] / c.bias_correction2;
    p[i] = p[i] - c.decay * p[i] - c.lr * (m_hat / (std::sqrt(v_hat) + c.eps));
  }
}

void check_f32_like(const Tensor& t, const Tensor& like, const char* what) {
  check_dtype(t, DType::F32, what);
  check_shape(t, like.shape(), what);
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStep& s) {
  check_dtype(param, DType::F32, "adamw_update param");
  check_f32_like(grad, param, "adamw_update grad");
  check_f32_like(m, param, "adamw_update m");
  check_f32_like(v, param, "adamw_update v");
  adam_apply(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), param.numel(),
             adam_coeffs(s));
}

void sparse_adam_update(Tensor& table, const Tensor& rows, const Tensor& row_grads, Tensor& m, Tensor& v,
                        const AdamStep& s) {
  check_dtype(table, DType::F32, "sparse_adam_update table");
  EG_ASSERT(table.ndim() == 2, "sparse_adam_update table must be [R, C], got ", table.describe());
  check_f32_like(m, table, "sparse_adam_update m");
  check_f32_like(v, table, "sparse_adam_update v");
  check_dtype(rows, DType::I64, "sparse_adam_update rows");
  const int64_t n_rows = table.dim(0), c = table.dim(1), u = rows.numel();
  check_dtype(row_grads, DType::F32, "sparse_adam_update row_grads");
  check_shape(row_grads, {u, c}, "sparse_adam_update row_grads");
  const AdamCoeffs coeffs = adam_coeffs(s);
  const int64_t* r = rows.data<int64_t>();
  const float* g = row_grads.data<float>();
  float* p = table.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  for (int64_t i = 0; i < u; ++i) {
    EG_ASSERT(r[i] >= 0 && r[i] < n_rows, "sparse_adam_update: row ", r[i], " outside [0, ", n_rows, ")");
    EG_ASSERT(i == 0 || r[i] > r[i - 1], "sparse_adam_update: rows not strictly ascending at ", i, " (", r[i - 1],
              ", ", r[i], ")");
    const int64_t at = r[i] * c;
    adam_apply(p + at, g + i * c, mp + at, vp + at, c, coeffs);
  }
}

}  // namespace engram::kernels::cpu
