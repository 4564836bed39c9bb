// Elementwise kernels against naive double-precision loops; silu backward also by finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

double naive_silu(double x) { return x / (1.0 + std::exp(-x)); }

TEST(KernelElementwise, AddScalesAndAccumulates) {
  std::mt19937 gen(1);
  Tensor y = random_uniform({3, 7}, gen), x = random_uniform({21}, gen);
  std::vector<double> expected(21);
  for (int i = 0; i < 21; ++i) expected[i] = double(y.data<float>()[i]) - 2.5 * x.data<float>()[i];
  kernels::add_(y, x, -2.5f);
  expect_close(y, expected, 0.0, 1e-6, "y");
}

TEST(KernelElementwise, AddWritesTheSumOutOfPlace) {
  std::mt19937 gen(7);
  const Tensor a = random_uniform({3, 7}, gen), b = random_uniform({21}, gen);
  const Tensor a_before = a.clone(), b_before = b.clone();
  std::vector<double> expected(21);
  for (int i = 0; i < 21; ++i) expected[i] = double(a.data<float>()[i]) + b.data<float>()[i];
  Tensor out = nan_tensor({3, 7});
  kernels::add(a, b, out);
  expect_close(out, expected, 0.0, 1e-6, "out");
  EXPECT_TRUE(bitwise_equal(a, a_before)) << "a changed";
  EXPECT_TRUE(bitwise_equal(b, b_before)) << "b changed";
  // The same float additions as adding in place (the residual stream relies on it).
  Tensor in_place = a.clone();
  kernels::add_(in_place, b);
  EXPECT_TRUE(bitwise_equal(out.view({21}), in_place.view({21}))) << "differs from add_";
  Tensor aliased = a.clone();
  kernels::add(aliased, b, aliased);
  EXPECT_TRUE(bitwise_equal(aliased, out)) << "out = a";
  Tensor wrong = Tensor::empty({20});
  EXPECT_THROW(kernels::add(a, b, wrong), Error);
  EXPECT_THROW(kernels::add(a, wrong, out), Error);
}

TEST(KernelElementwise, CopyIntoColumnsWritesThoseColumnsOnly) {
  std::mt19937 gen(9);
  const Tensor src = random_uniform({5, 3}, gen), before = random_uniform({5, 8}, gen);
  Tensor dst = before.clone();
  kernels::copy_into_columns(src, dst, 4);
  for (int64_t r = 0; r < 5; ++r)
    for (int64_t c = 0; c < 8; ++c)
      ASSERT_EQ(dst.data<float>()[r * 8 + c],
                c >= 4 && c < 7 ? src.data<float>()[r * 3 + c - 4] : before.data<float>()[r * 8 + c])
          << "row " << r << ", column " << c;
  EXPECT_THROW(kernels::copy_into_columns(src, dst, 6), Error);  // past the last column
  Tensor other_rows = Tensor::zeros({4, 8});
  EXPECT_THROW(kernels::copy_into_columns(src, other_rows, 0), Error);
  Tensor other_dtype = Tensor::zeros({5, 8}, DType::I32);
  EXPECT_THROW(kernels::copy_into_columns(src, other_dtype, 0), Error);
}

TEST(KernelElementwise, ScaleMultipliesInPlace) {
  std::mt19937 gen(2);
  Tensor y = random_uniform({13}, gen);
  std::vector<double> expected(13);
  for (int i = 0; i < 13; ++i) expected[i] = 0.3 * y.data<float>()[i];
  kernels::scale_(y, 0.3f);
  expect_close(y, expected, 0.0, 1e-6, "y");
}

TEST(KernelElementwise, SiluForwardMatchesNaiveIncludingLargeInputs) {
  std::mt19937 gen(3);
  Tensor x = random_uniform({5, 33}, gen, -8.0f, 8.0f);
  x.data<float>()[0] = -200.0f;  // exp overflows: silu must still be finite (0)
  x.data<float>()[1] = 200.0f;
  Tensor y = nan_tensor({5, 33});
  kernels::silu_forward(x, y);
  std::vector<double> expected(x.numel());
  for (int64_t i = 0; i < x.numel(); ++i) expected[i] = naive_silu(x.data<float>()[i]);
  expect_close(y, expected, 0.0, 1e-5, "y");
}

TEST(KernelElementwise, SiluBackwardMatchesNaiveAndFiniteDifferences) {
  std::mt19937 gen(4);
  Tensor x = random_uniform({7, 13}, gen, -5.0f, 5.0f), dy = random_uniform({7, 13}, gen);
  Tensor dx = nan_tensor({7, 13});
  kernels::silu_backward(dy, x, dx);
  std::vector<double> analytic(x.numel()), numeric(x.numel());
  const double eps = 1e-5;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double xi = x.data<float>()[i], dyi = dy.data<float>()[i];
    const double s = 1.0 / (1.0 + std::exp(-xi));
    analytic[i] = dyi * (s + xi * s * (1.0 - s));
    // L = Σ dy ⊙ silu(x): ∂L/∂x_i by central differences on the naive forward.
    numeric[i] = dyi * (naive_silu(xi + eps) - naive_silu(xi - eps)) / (2 * eps);
  }
  expect_close(dx, analytic, 0.0, 1e-5, "dx vs analytic");
  expect_close(dx, numeric, 0.0, 1e-5, "dx vs finite differences");
}

TEST(KernelElementwise, AddBiasRowsAddsToEveryRow) {
  std::mt19937 gen(5);
  Tensor y = random_uniform({2, 3, 7}, gen), bias = random_uniform({7}, gen);
  std::vector<double> expected(y.numel());
  for (int64_t i = 0; i < y.numel(); ++i)
    expected[i] = double(y.data<float>()[i]) + bias.data<float>()[i % 7];
  kernels::add_bias_rows(y, bias);
  expect_close(y, expected, 0.0, 1e-6, "y");
}

TEST(KernelElementwise, BiasGradAccumulatesColumnSums) {
  std::mt19937 gen(6);
  Tensor dy = random_uniform({33, 5}, gen), dbias = random_uniform({5}, gen);
  std::vector<double> expected(5);
  for (int c = 0; c < 5; ++c) {
    expected[c] = dbias.data<float>()[c];
    for (int r = 0; r < 33; ++r) expected[c] += dy.data<float>()[r * 5 + c];
  }
  kernels::bias_grad(dy, dbias);
  expect_close(dbias, expected, 0.0, 1e-5, "dbias");
}

TEST(KernelElementwise, SumSquaresIsDoubleInIndexOrder) {
  std::mt19937 gen(7);
  Tensor x = random_uniform({13, 33}, gen, -100.0f, 100.0f);
  double expected = 0.0;
  for (int64_t i = 0; i < x.numel(); ++i) expected += double(x.data<float>()[i]) * x.data<float>()[i];
  EXPECT_EQ(kernels::sum_squares(x), expected);
  EXPECT_EQ(kernels::sum_squares(Tensor::zeros({0})), 0.0);
}

TEST(KernelElementwise, MismatchedSizesThrow) {
  Tensor y = Tensor::zeros({4}), x = Tensor::zeros({5}), bias = Tensor::zeros({3});
  EXPECT_THROW(kernels::add_(y, x), Error);
  EXPECT_THROW(kernels::add_bias_rows(y, bias), Error);
}

}  // namespace
}  // namespace engram
