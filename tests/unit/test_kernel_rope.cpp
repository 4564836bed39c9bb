// RoPE tables and rotation against a naive double-precision rotate-half reference (MODEL.md §2).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/rope.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

double naive_angle(int64_t pos, int64_t i, int64_t head_dim, double theta) {
  return static_cast<double>(pos) *
         std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
}

// Rotates x [B, T, H, d_h] in double: (a_i, a_{i+d/2}) -> (a cos − b sin, a sin + b cos).
std::vector<double> naive_rope(const Tensor& x, double theta) {
  const int64_t batch = x.dim(0), seq = x.dim(1), heads = x.dim(2), dh = x.dim(3), half = dh / 2;
  const float* xp = x.data<float>();
  std::vector<double> y(x.numel());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t base = ((b * seq + t) * heads + h) * dh;
        for (int64_t i = 0; i < half; ++i) {
          const double angle = naive_angle(t, i, dh, theta), a = xp[base + i], z = xp[base + i + half];
          y[base + i] = a * std::cos(angle) - z * std::sin(angle);
          y[base + i + half] = a * std::sin(angle) + z * std::cos(angle);
        }
      }
  return y;
}

TEST(KernelRope, TablesFollowTheFrequencyFormula) {
  const int64_t seq = 17, dh = 10;
  const double theta = 10000.0;
  kernels::RopeTables tables = kernels::make_rope_tables(seq, dh, theta);
  ASSERT_EQ(tables.cos.shape(), (Shape{seq, dh / 2}));
  ASSERT_EQ(tables.sin.shape(), (Shape{seq, dh / 2}));
  std::vector<double> cos_ref, sin_ref;
  for (int64_t pos = 0; pos < seq; ++pos)
    for (int64_t i = 0; i < dh / 2; ++i) {
      cos_ref.push_back(std::cos(naive_angle(pos, i, dh, theta)));
      sin_ref.push_back(std::sin(naive_angle(pos, i, dh, theta)));
    }
  expect_close(tables.cos, cos_ref, 0.0, 1e-7, "tables.cos");
  expect_close(tables.sin, sin_ref, 0.0, 1e-7, "tables.sin");
  // Frequency 0 is θ^0 = 1: the angle is the position itself.
  EXPECT_FLOAT_EQ(tables.cos.data<float>()[3 * (dh / 2)], static_cast<float>(std::cos(3.0)));
}

// Rotates a random x with tables of `table_len` positions and compares with the naive rotation.
void check_apply(const Shape& shape, int64_t table_len, double theta, std::mt19937& gen) {
  SCOPED_TRACE(shape_str(shape));
  kernels::RopeTables tables = kernels::make_rope_tables(table_len, shape[3], theta);
  Tensor x = random_uniform(shape, gen);
  const std::vector<double> expected = naive_rope(x, theta);
  kernels::rope_apply_to(x, tables.cos, tables.sin, false, x);
  expect_close(x, expected, 0.0, 1e-5, "rotated x");
}

TEST(KernelRope, ApplyMatchesNaiveRotation) {
  std::mt19937 gen(1);
  const Shape shapes[] = {{1, 1, 1, 2}, {2, 7, 3, 6}, {1, 13, 1, 8}};
  for (const Shape& shape : shapes) check_apply(shape, shape[1], 500.0, gen);
}

TEST(KernelRope, LongerTablesUseTheirFirstRows) {
  std::mt19937 gen(2);
  check_apply({3, 5, 2, 4}, 33, 10000.0, gen);
}

TEST(KernelRope, InverseUndoesForward) {
  std::mt19937 gen(3);
  kernels::RopeTables tables = kernels::make_rope_tables(13, 6, 10000.0);
  Tensor x = random_uniform({2, 13, 3, 6}, gen);
  const std::vector<double> original = to_double(x);
  kernels::rope_apply_to(x, tables.cos, tables.sin, false, x);
  kernels::rope_apply_to(x, tables.cos, tables.sin, true, x);
  expect_close(x, original, 0.0, 1e-6, "round-tripped x");
}

TEST(KernelRope, PositionZeroIsIdentity) {
  std::mt19937 gen(4);
  kernels::RopeTables tables = kernels::make_rope_tables(7, 8, 10000.0);
  Tensor x = random_uniform({3, 7, 2, 8}, gen);
  const std::vector<float> original = x.to_vector<float>();
  kernels::rope_apply_to(x, tables.cos, tables.sin, false, x);
  const int64_t row = 7 * 2 * 8, pos0 = 2 * 8;  // floats per sequence, per position
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t i = 0; i < pos0; ++i) EXPECT_EQ(x.data<float>()[b * row + i], original[b * row + i]);
}

// The backward of y = R·x is dx = Rᵀ·dy = rope(dy, inverse): check <dy, R x> = <Rᵀ dy, x>, the exact
// gradient identity of L = Σ dy ⊙ rope(x) for a linear map.
TEST(KernelRope, InverseIsTheAdjoint) {
  std::mt19937 gen(5);
  kernels::RopeTables tables = kernels::make_rope_tables(9, 10, 10000.0);
  Tensor x = random_uniform({2, 9, 3, 10}, gen), dy = random_uniform({2, 9, 3, 10}, gen);
  Tensor rx = x.clone(), rt_dy = dy.clone();
  kernels::rope_apply_to(rx, tables.cos, tables.sin, false, rx);
  kernels::rope_apply_to(rt_dy, tables.cos, tables.sin, true, rt_dy);
  EXPECT_NEAR(dot(to_double(dy), to_double(rx)), dot(to_double(rt_dy), to_double(x)), 1e-4);
}

// rope_apply_to writes into another tensor what it writes in place, and leaves x as it was.
TEST(KernelRope, ApplyToAnotherTensorMatchesInPlace) {
  std::mt19937 gen(6);
  kernels::RopeTables tables = kernels::make_rope_tables(11, 6, 10000.0);
  const Tensor x = random_uniform({2, 11, 3, 6}, gen);
  for (bool inverse : {false, true}) {
    Tensor in_place = x.clone(), out = nan_tensor(x.shape());
    const Tensor before = x.clone();
    kernels::rope_apply_to(in_place, tables.cos, tables.sin, inverse, in_place);
    kernels::rope_apply_to(x, tables.cos, tables.sin, inverse, out);
    EXPECT_TRUE(bitwise_equal(out, in_place)) << "inverse " << inverse;
    EXPECT_TRUE(bitwise_equal(x, before)) << "inverse " << inverse;
  }
  Tensor wrong_shape = Tensor::zeros({2, 11, 3, 4});
  EXPECT_THROW(kernels::rope_apply_to(x, tables.cos, tables.sin, false, wrong_shape), Error);
}

// Into columns of wider rows: each token's rotated heads side by side from first_column, the
// columns around them untouched, bit for bit what rope_apply_to writes.
TEST(KernelRope, ApplyIntoColumnsWritesTheSameRowsThere) {
  std::mt19937 gen(7);
  kernels::RopeTables tables = kernels::make_rope_tables(11, 6, 10000.0);
  const Tensor x = random_uniform({2, 11, 3, 6}, gen);
  for (bool inverse : {false, true}) {
    Tensor rotated = nan_tensor(x.shape());
    kernels::rope_apply_to(x, tables.cos, tables.sin, inverse, rotated);
    const Tensor wide_before = random_uniform({22, 25}, gen);
    Tensor wide = wide_before.clone();
    kernels::rope_apply_into_columns(x, tables.cos, tables.sin, inverse, wide, 4);
    for (int64_t r = 0; r < 22; ++r)
      for (int64_t c = 0; c < 25; ++c) {
        const float expected =
            c >= 4 && c < 22 ? rotated.data<float>()[r * 18 + c - 4] : wide_before.data<float>()[r * 25 + c];
        ASSERT_EQ(wide.data<float>()[r * 25 + c], expected) << "row " << r << ", column " << c;
      }
  }
  Tensor narrow = Tensor::zeros({22, 21});  // 18 columns from 4 need 22
  EXPECT_THROW(kernels::rope_apply_into_columns(x, tables.cos, tables.sin, false, narrow, 4), Error);
  Tensor too_few_rows = Tensor::zeros({21, 25});
  EXPECT_THROW(kernels::rope_apply_into_columns(x, tables.cos, tables.sin, false, too_few_rows, 0), Error);
}

TEST(KernelRope, OddHeadDimIsRejected) {
  EXPECT_THROW(kernels::make_rope_tables(8, 7, 10000.0), Error);
  kernels::RopeTables tables = kernels::make_rope_tables(4, 4, 10000.0);
  Tensor x = Tensor::zeros({1, 5, 1, 4});  // longer than the tables
  EXPECT_THROW(kernels::rope_apply_to(x, tables.cos, tables.sin, false, x), Error);
}

}  // namespace
}  // namespace engram
