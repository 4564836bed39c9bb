// Small elementwise and reduction kernels on the CPU.
#include "kernels/elementwise.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/checks.h"

namespace engram::kernels::cpu {

namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void check_same_numel(const Tensor& a, const Tensor& b, const char* what) {
  EG_ASSERT(a.numel() == b.numel(), what, ": ", shape_str(a.shape()), " and ", shape_str(b.shape()),
            " differ in size");
}

}  // namespace

void add_(Tensor& y, const Tensor& x, float alpha) {
  check_same_numel(y, x, "add_");
  float* yp = y.data<float>();
  const float* xp = x.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] += alpha * xp[i];
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  check_same_numel(a, b, "add");
  check_same_numel(out, a, "add out");
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  float* op = out.data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) op[i] = ap[i] + bp[i];
}

void scale_(Tensor& y, float alpha) {
  float* yp = y.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] *= alpha;
}

void copy_into_columns(const Tensor& src, Tensor& dst, int64_t first_column) {
  checks::copy_into_columns(src, dst, first_column);
  if (src.numel() == 0) return;
  const size_t value = dtype_size(src.dtype()), row = static_cast<size_t>(src.dim(1)) * value;
  const auto* from = static_cast<const char*>(src.raw());
  auto* to = static_cast<char*>(dst.raw()) + static_cast<size_t>(first_column) * value;
  const size_t pitch = static_cast<size_t>(dst.dim(1)) * value;
  for (int64_t r = 0; r < src.dim(0); ++r) std::memcpy(to + r * pitch, from + r * row, row);
}

void silu_forward(const Tensor& x, Tensor& y) {
  check_same_numel(x, y, "silu_forward");
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) yp[i] = xp[i] * sigmoid(xp[i]);
}

void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) {
  check_same_numel(dy, x, "silu_backward");
  check_same_numel(dx, x, "silu_backward");
  const float* dyp = dy.data<float>();
  const float* xp = x.data<float>();
  float* dxp = dx.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    // d/dx [x·s(x)] = s(x) + x·s(x)·(1 − s(x)) = s(x)·(1 + x·(1 − s(x)))
    const float s = sigmoid(xp[i]);
    dxp[i] = dyp[i] * s * (1.0f + xp[i] * (1.0f - s));
  }
}

void add_bias_rows(Tensor& y, const Tensor& bias) {
  const int64_t cols = y.cols();
  EG_ASSERT(bias.numel() == cols, "add_bias_rows: bias ", shape_str(bias.shape()), " for rows of ",
            shape_str(y.shape()));
  float* yp = y.data<float>();
  const float* bp = bias.data<float>();
  for (int64_t r = 0; r < y.rows(); ++r)
    for (int64_t c = 0; c < cols; ++c) yp[r * cols + c] += bp[c];
}

void bias_grad(const Tensor& dy, Tensor& dbias) {
  const int64_t cols = dy.cols();
  EG_ASSERT(dbias.numel() == cols, "bias_grad: dbias ", shape_str(dbias.shape()), " for rows of ",
            shape_str(dy.shape()));
  // Column sums in double: many rows (tokens) feed each entry.
  std::vector<double> sums(static_cast<size_t>(cols), 0.0);
  const float* dyp = dy.data<float>();
  for (int64_t r = 0; r < dy.rows(); ++r)
    for (int64_t c = 0; c < cols; ++c) sums[c] += dyp[r * cols + c];
  float* dbp = dbias.data<float>();
  for (int64_t c = 0; c < cols; ++c) dbp[c] += static_cast<float>(sums[c]);
}

double sum_squares(const Tensor& x) {
  const float* xp = x.data<float>();
  double sum = 0.0;
  for (int64_t i = 0; i < x.numel(); ++i) sum += static_cast<double>(xp[i]) * xp[i];
  return sum;
}

std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  std::vector<double> sums;
  for (const Tensor& x : xs) sums.push_back(sum_squares(x));
  return sums;
}

}  // namespace engram::kernels::cpu
