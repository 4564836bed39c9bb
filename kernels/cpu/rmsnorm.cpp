// RMSNorm over the last dimension on the CPU.
// The mean of squares and the backward's row dot product are accumulated in double (rows are the
// model width, up to thousands of terms), then rstd is rounded to float once and saved; the backward
// uses that saved float rstd, so it is the exact derivative of the forward as computed.
#include "kernels/rmsnorm.h"

#include <cmath>
#include <vector>

#include "kernels/checks.h"

namespace engram::kernels::cpu {

void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd) {
  const int64_t rows = x.rows(), dim = x.cols();
  checks::rmsnorm_forward(x, g, y, rstd);
  const float* xp = x.data<float>();
  const float* gp = g.data<float>();
  float* yp = y.data<float>();
  float* rp = rstd.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * dim;
    double sum_sq = 0.0;
    for (int64_t j = 0; j < dim; ++j) sum_sq += static_cast<double>(xr[j]) * xr[j];
    const float rs = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps));
    rp[r] = rs;
    float* yr = yp + r * dim;
    for (int64_t j = 0; j < dim; ++j) yr[j] = xr[j] * rs * gp[j];
  }
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg, const Tensor& dx_residual) {
  const int64_t rows = x.rows(), dim = x.cols();
  checks::rmsnorm_backward(dy, x, g, rstd, dx, dg, dx_residual);
  const float* dyp = dy.data<float>();
  const float* xp = x.data<float>();
  const float* gp = g.data<float>();
  const float* rp = rstd.data<float>();
  float* dxp = dx.data<float>();
  const float* resp = dx_residual.defined() ? dx_residual.data<float>() : nullptr;
  std::vector<double> dg_sum(static_cast<size_t>(dim), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* dyr = dyp + r * dim;
    const float* xr = xp + r * dim;
    const double rs = rp[r];
    // y_j = x_j·rs·g_j with rs = (Σx²/D + eps)^(−1/2), so ∂rs/∂x_k = −rs³·x_k/D and
    // dx_k = rs·g_k·dy_k − rs³·x_k/D · Σ_j dy_j·g_j·x_j.
    double dot = 0.0;
    for (int64_t j = 0; j < dim; ++j) dot += static_cast<double>(dyr[j]) * gp[j] * xr[j];
    const double coef = rs * rs * rs * dot / static_cast<double>(dim);
    float* dxr = dxp + r * dim;
    const float* resr = resp ? resp + r * dim : nullptr;
    for (int64_t j = 0; j < dim; ++j) {
      dg_sum[j] += static_cast<double>(dyr[j]) * xr[j] * rs;
      const float norm_dx = static_cast<float>(rs * gp[j] * dyr[j] - coef * xr[j]);
      dxr[j] = resr ? norm_dx + resr[j] : norm_dx;  // rounded to float first: the sum add_ would make
    }
  }
  float* dgp = dg.data<float>();
  for (int64_t j = 0; j < dim; ++j) dgp[j] += static_cast<float>(dg_sum[j]);
}

}  // namespace engram::kernels::cpu
