// RMSNorm forward/backward against a naive double-precision reference and finite differences, and
// the backward's residual-gradient input.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/rmsnorm.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

constexpr float kEps = 1e-5f;

double naive_rstd(const std::vector<double>& x, int64_t r, int64_t dim) {
  double sum_sq = 0.0;
  for (int64_t j = 0; j < dim; ++j) sum_sq += x[r * dim + j] * x[r * dim + j];
  return 1.0 / std::sqrt(sum_sq / dim + kEps);
}

std::vector<double> naive_forward(const std::vector<double>& x, const std::vector<double>& g, int64_t dim) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / dim; ++r) {
    const double rs = naive_rstd(x, r, dim);
    for (int64_t j = 0; j < dim; ++j) y[r * dim + j] = x[r * dim + j] * rs * g[j];
  }
  return y;
}

TEST(KernelRmsnorm, ForwardMatchesNaive) {
  std::mt19937 gen(1);
  const Shape shapes[] = {{1, 1}, {7, 13}, {2, 3, 33}, {5, 1}};
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t dim = shape.back();
    Tensor x = random_uniform(shape, gen, -3.0f, 3.0f), g = random_uniform({dim}, gen, 0.5f, 1.5f);
    Tensor y = nan_tensor(shape), rstd = nan_tensor({x.rows()});
    kernels::rmsnorm_forward(x, g, kEps, y, rstd);
    const std::vector<double> xd = to_double(x);
    expect_close(y, naive_forward(xd, to_double(g), dim), 0.0, 1e-5, "y");
    std::vector<double> expected_rstd(x.rows());
    for (int64_t r = 0; r < x.rows(); ++r) expected_rstd[r] = naive_rstd(xd, r, dim);
    expect_close(rstd, expected_rstd, 0.0, 1e-5, "rstd");
  }
}

TEST(KernelRmsnorm, ZeroRowStaysFinite) {
  Tensor x = Tensor::zeros({2, 7}), g = Tensor::full({7}, 1.0f);
  Tensor y = nan_tensor({2, 7}), rstd = nan_tensor({2});
  kernels::rmsnorm_forward(x, g, kEps, y, rstd);
  expect_close(y, std::vector<double>(14, 0.0), 0.0, 0.0, "y");
  expect_close(rstd, {1.0 / std::sqrt(double(kEps)), 1.0 / std::sqrt(double(kEps))}, 0.0, 1e-2, "rstd");
}

TEST(KernelRmsnorm, BackwardMatchesNaiveAndFiniteDifferences) {
  std::mt19937 gen(2);
  const Shape shapes[] = {{1, 1}, {7, 13}, {3, 1, 33}};
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape_str(shape));
    const int64_t dim = shape.back(), rows = shape_numel(shape) / dim;
    Tensor x = random_uniform(shape, gen, -2.0f, 2.0f), g = random_uniform({dim}, gen, 0.5f, 1.5f);
    Tensor dy = random_uniform(shape, gen);
    Tensor y = nan_tensor(shape), rstd = nan_tensor({rows});
    kernels::rmsnorm_forward(x, g, kEps, y, rstd);
    Tensor dg = random_uniform({dim}, gen);  // accumulated into
    const std::vector<double> dg_before = to_double(dg);
    Tensor dx = nan_tensor(shape);
    kernels::rmsnorm_backward(dy, x, g, rstd, dx, dg);

    std::vector<double> xd = to_double(x), gd = to_double(g);
    const std::vector<double> dyd = to_double(dy);
    // Naive backward: dx_k = rs·g_k·dy_k − rs³·x_k/D · Σ_j dy_j g_j x_j; dg_j = Σ_rows dy_j x_j rs.
    std::vector<double> dx_ref(xd.size()), dg_ref = dg_before;
    for (int64_t r = 0; r < rows; ++r) {
      const double rs = naive_rstd(xd, r, dim);
      double dot = 0.0;
      for (int64_t j = 0; j < dim; ++j) dot += dyd[r * dim + j] * gd[j] * xd[r * dim + j];
      for (int64_t j = 0; j < dim; ++j) {
        dx_ref[r * dim + j] = rs * gd[j] * dyd[r * dim + j] - rs * rs * rs * xd[r * dim + j] / dim * dot;
        dg_ref[j] += dyd[r * dim + j] * xd[r * dim + j] * rs;
      }
    }
    expect_close(dx, dx_ref, 0.0, 1e-5, "dx");
    expect_close(dg, dg_ref, 0.0, 1e-5, "dg");

    // L = Σ dy ⊙ RMSNorm(x; g), central differences on the naive forward.
    auto loss = [&] { return dot(dyd, naive_forward(xd, gd, dim)); };
    const std::vector<double> dx_num = numeric_gradient(xd, loss, 1e-6);
    std::vector<double> dg_num = numeric_gradient(gd, loss, 1e-6);
    for (int64_t j = 0; j < dim; ++j) dg_num[j] += dg_before[j];
    expect_close(dx, dx_num, 0.0, 1e-4, "dx vs finite differences");
    expect_close(dg, dg_num, 0.0, 1e-4, "dg vs finite differences");
  }
}

// The residual gradient is added as dx is written: the same float additions as adding it after.
TEST(KernelRmsnorm, BackwardAddsTheResidualGradientAsItWritesDx) {
  std::mt19937 gen(3);
  const Shape shape{2, 5, 33};
  const Tensor x = random_uniform(shape, gen, -2.0f, 2.0f), g = random_uniform({33}, gen, 0.5f, 1.5f);
  const Tensor dy = random_uniform(shape, gen), residual = random_uniform(shape, gen);
  const Tensor residual_before = residual.clone();
  Tensor y = nan_tensor(shape), rstd = nan_tensor({10});
  kernels::rmsnorm_forward(x, g, kEps, y, rstd);
  Tensor dx = nan_tensor(shape), dg = Tensor::zeros({33});
  kernels::rmsnorm_backward(dy, x, g, rstd, dx, dg);
  Tensor dx_with = nan_tensor(shape), dg_with = Tensor::zeros({33});
  kernels::rmsnorm_backward(dy, x, g, rstd, dx_with, dg_with, residual);

  std::vector<double> expected = to_double(dx);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += residual.data<float>()[i];
  expect_close(dx_with, expected, 0.0, 1e-6, "dx + residual");
  kernels::add_(dx, residual);
  EXPECT_TRUE(bitwise_equal(dx_with, dx)) << "differs from dx then add_";
  EXPECT_TRUE(bitwise_equal(dg_with, dg)) << "dg changed";
  EXPECT_TRUE(bitwise_equal(residual, residual_before)) << "residual changed";

  Tensor wrong = Tensor::zeros({2, 5, 32});
  EXPECT_THROW(kernels::rmsnorm_backward(dy, x, g, rstd, dx_with, dg_with, wrong), Error);
}

TEST(KernelRmsnorm, WrongGainShapeThrows) {
  Tensor x = Tensor::zeros({3, 5}), g = Tensor::zeros({4}), y = Tensor::zeros({3, 5}),
         rstd = Tensor::zeros({3});
  EXPECT_THROW(kernels::rmsnorm_forward(x, g, kEps, y, rstd), Error);
}

}  // namespace
}  // namespace engram
