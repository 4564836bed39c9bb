#include "kernels/adam.h"

#include <cmath>

#include "kernels/checks.h"

namespace engram::kernels {

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

namespace cpu {

namespace {

void adam_apply(float* p, const float* grad, float* m, float* v, int64_t n, const AdamCoeffs& c) {
  for (int64_t i = 0; i < n; ++i) adam_element(p[i], grad[i], m[i], v[i], c);
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStep& s) {
  checks::adamw(param, grad, m, v);
  adam_apply(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), param.numel(),
             adam_coeffs(s));
}

void sparse_adam_update(Tensor& table, const Tensor& rows, const Tensor& row_grads, Tensor& m, Tensor& v,
                        const AdamStep& s) {
  checks::sparse_adam(table, rows, row_grads, m, v);
  const int64_t n_rows = table.dim(0), c = table.dim(1), u = rows.numel();
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

}  // namespace cpu
}  // namespace engram::kernels
