#pragma once
// Small elementwise and reduction kernels (F32). Outputs written unless said "accumulated".
#include <vector>

#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
void add_(Tensor& y, const Tensor& x, float alpha = 1.0f);   // y += alpha·x (same numel)
void add(const Tensor& a, const Tensor& b, Tensor& out);     // out = a + b (same numel; out may be a or b)
void scale_(Tensor& y, float alpha);                         // y *= alpha
// dst[:, first_column : first_column + C] = src, src [N, C] and dst [N, W] of one dtype (any).
void copy_into_columns(const Tensor& src, Tensor& dst, int64_t first_column);
void silu_forward(const Tensor& x, Tensor& y);                // y = x·sigmoid(x)
void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx);  // dx = dy·silu'(x)
void add_bias_rows(Tensor& y, const Tensor& bias);           // y[r, :] += bias, y [N, C], bias [C]
void bias_grad(const Tensor& dy, Tensor& dbias);             // dbias += Σ_r dy[r, :] (accumulated)
double sum_squares(const Tensor& x);                          // Σ x², accumulated in double in index order
std::vector<double> sum_squares_each(const std::vector<Tensor>& xs);  // sum_squares of each
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/elementwise.cu, the contracts of cpu:: above
void add_(Tensor& y, const Tensor& x, float alpha = 1.0f);
void add(const Tensor& a, const Tensor& b, Tensor& out);
void scale_(Tensor& y, float alpha);
void copy_into_columns(const Tensor& src, Tensor& dst, int64_t first_column);  // one strided copy
void silu_forward(const Tensor& x, Tensor& y);
void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx);
void add_bias_rows(Tensor& y, const Tensor& bias);
void bias_grad(const Tensor& dy, Tensor& dbias);
double sum_squares(const Tensor& x);  // waits for the device (the result is a host value)
std::vector<double> sum_squares_each(const std::vector<Tensor>& xs);  // one wait for them all
}  // namespace cuda
#endif
EG_KERNEL(add_)
EG_KERNEL(add)
EG_KERNEL(scale_)
EG_KERNEL(copy_into_columns)
EG_KERNEL(silu_forward)
EG_KERNEL(silu_backward)
EG_KERNEL(add_bias_rows)
EG_KERNEL(bias_grad)
EG_KERNEL(sum_squares)

// sum_squares of each tensor (all on one device), bitwise as one call each would give; on CUDA one
// wait for them all instead of one per tensor (the gradient norm takes every parameter's).
inline std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  for (const Tensor& x : xs)
    EG_ASSERT(x.device() == xs.front().device(), "sum_squares_each: ", x.describe(), " is not on the device of ",
              xs.front().describe());
  if (xs.empty() || xs.front().device() == Device::CPU) return cpu::sum_squares_each(xs);
#ifdef ENGRAM_HAVE_CUDA
  return cuda::sum_squares_each(xs);
#else
  EG_FAIL("sum_squares_each: tensor is on cuda but this build has no CUDA backend");
#endif
}
}  // namespace engram::kernels
