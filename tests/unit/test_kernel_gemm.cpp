// gemm and grouped gemm against naive double-precision products.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/gemm.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

// Element (i, j) of op(m) for m read as a [rows, cols] matrix.
double op_at(const Tensor& m, bool trans, int64_t i, int64_t j) {
  const float* p = m.data<float>();
  return trans ? p[j * m.cols() + i] : p[i * m.cols() + j];
}

// alpha·op(a)·op(b) + beta·c, accumulated in double.
std::vector<double> naive_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                               double alpha, double beta) {
  const int64_t m = ta ? a.cols() : a.rows(), k = ta ? a.rows() : a.cols(), n = tb ? b.rows() : b.cols();
  std::vector<double> out(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (int64_t l = 0; l < k; ++l) sum += op_at(a, ta, i, l) * op_at(b, tb, l, j);
      out[i * n + j] = alpha * sum + (beta == 0.0 ? 0.0 : beta * c.data<float>()[i * n + j]);
    }
  }
  return out;
}

// Shape of a matrix whose op() is [rows, cols].
Shape op_shape(int64_t rows, int64_t cols, bool trans) {
  return trans ? Shape{cols, rows} : Shape{rows, cols};
}

TEST(KernelGemm, AllTransposeCombinationsMatchNaive) {
  std::mt19937 gen(1);
  const int64_t sizes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 3, 13}, {3, 33, 1}};
  for (const auto& s : sizes) {
    const int64_t m = s[0], k = s[1], n = s[2];
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "m=" << m << " k=" << k << " n=" << n << " ta=" << ta << " tb=" << tb);
        Tensor a = random_uniform(op_shape(m, k, ta), gen);
        Tensor b = random_uniform(op_shape(k, n, tb), gen);
        Tensor c = nan_tensor({m, n});
        kernels::gemm(a, ta, b, tb, c, 0.75f);
        expect_close(c, naive_gemm(a, ta, b, tb, c, 0.75, 0.0), 0.0, 1e-5, "c");
      }
    }
  }
}

TEST(KernelGemm, BetaAccumulatesIntoOutput) {
  std::mt19937 gen(2);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Tensor a = random_uniform(op_shape(9, 13, ta), gen);
      Tensor b = random_uniform(op_shape(13, 7, tb), gen);
      Tensor c = random_uniform({9, 7}, gen);
      const std::vector<double> expected_acc = naive_gemm(a, ta, b, tb, c, 1.5, 1.0);
      const std::vector<double> expected_half = naive_gemm(a, ta, b, tb, c, 1.0, 0.5);
      Tensor c_half = c.clone();
      kernels::gemm(a, ta, b, tb, c, 1.5f, 1.0f);
      expect_close(c, expected_acc, 0.0, 1e-5, "c");
      kernels::gemm(a, ta, b, tb, c_half, 1.0f, 0.5f);
      expect_close(c_half, expected_half, 0.0, 1e-5, "c_half");
    }
  }
}

TEST(KernelGemm, PlusWritesTheProductPlusTheAddendIntoAnotherTensorOrOntoIt) {
  std::mt19937 gen(7);
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(testing::Message() << "ta=" << ta << " tb=" << tb);
      Tensor a = random_uniform(op_shape(9, 13, ta), gen);
      Tensor b = random_uniform(op_shape(13, 7, tb), gen);
      Tensor c = random_uniform({9, 7}, gen);
      const Tensor c_before = c.clone();
      const std::vector<double> expected = naive_gemm(a, ta, b, tb, c, 1.0, 1.0);
      Tensor d = nan_tensor({9, 7});
      kernels::gemm_plus(a, ta, b, tb, c, d);
      expect_close(d, expected, 0.0, 1e-5, "d");
      expect_close(c, to_double(c_before), 0.0, 0.0, "c (read only)");
      kernels::gemm_plus(a, ta, b, tb, c, c);  // d = c: in place
      expect_close(c, expected, 0.0, 1e-5, "c");
    }
  }
}

TEST(KernelGemm, PlusWithAnEmptyInnerDimensionCopiesTheAddend) {
  const Tensor a = Tensor::zeros({3, 0}), b = Tensor::zeros({0, 4});
  std::mt19937 gen(8);
  const Tensor c = random_uniform({3, 4}, gen);
  Tensor d = nan_tensor({3, 4});
  kernels::gemm_plus(a, false, b, false, c, d);
  expect_close(d, to_double(c), 0.0, 0.0, "d");
}

TEST(KernelGemm, PlusRejectsBadAddendsAndLeavesTheOutputAlone) {
  Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({4, 2}), d = Tensor::full({3, 2}, 7.0f);
  EXPECT_THROW(kernels::gemm_plus(a, false, b, false, Tensor::zeros({2, 3}), d), Error);
  EXPECT_THROW(kernels::gemm_plus(a, false, b, false, Tensor::zeros({3, 2}, DType::I32), d), Error);
  EXPECT_THROW(kernels::gemm_plus(a, false, Tensor::zeros({5, 2}), false, Tensor::zeros({3, 2}), d), Error);
  // An addend that overlaps the output without being it (one row along).
  Tensor storage = Tensor::zeros({4, 2});
  Tensor out = storage.slice(0, 3);
  EXPECT_THROW(kernels::gemm_plus(a, false, b, false, storage.slice(1, 4), out), Error);
  expect_close(d, std::vector<double>(6, 7.0), 0.0, 0.0, "d after the refusals");
}

TEST(KernelGemm, ReadsHigherRankTensorsAsMatrices) {
  std::mt19937 gen(3);
  Tensor a = random_uniform({2, 3, 5}, gen);  // [6, 5]
  Tensor b = random_uniform({7, 5}, gen);     // op(b) = [5, 7]
  Tensor c = nan_tensor({2, 3, 7});
  kernels::gemm(a, false, b, true, c);
  expect_close(c, naive_gemm(a, false, b, true, c, 1.0, 0.0), 0.0, 1e-5, "c");
}

TEST(KernelGemm, ZeroInnerDimensionWritesBetaTimesC) {
  Tensor a = Tensor::zeros({0, 4});  // op(a) = aᵀ is [4, 0]
  Tensor b = Tensor::zeros({0, 3});
  Tensor c = nan_tensor({4, 3});
  kernels::gemm(a, true, b, false, c);
  expect_close(c, std::vector<double>(12, 0.0), 0.0, 0.0, "c");
}

TEST(KernelGemm, ShapeMismatchThrowsNamingShapes) {
  Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5, 2}), c = Tensor::zeros({3, 2});
  try {
    kernels::gemm(a, false, b, false, c);
    FAIL() << "expected engram::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 4]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[5, 2]"), std::string::npos) << e.what();
  }
}

// Naive grouped product: rows [off[g], off[g+1]) of a times op(b[g]).
std::vector<double> naive_grouped(const Tensor& a, const Tensor& b, bool trans_b,
                                  const std::vector<int64_t>& off) {
  const int64_t r = b.dim(1), s = b.dim(2), in = trans_b ? s : r, out = trans_b ? r : s;
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  std::vector<double> c(static_cast<size_t>(a.rows() * out));
  for (size_t g = 0; g + 1 < off.size(); ++g) {
    const float* bg = bp + g * r * s;
    for (int64_t row = off[g]; row < off[g + 1]; ++row) {
      for (int64_t j = 0; j < out; ++j) {
        double sum = 0.0;
        for (int64_t l = 0; l < in; ++l)
          sum += double(ap[row * in + l]) * (trans_b ? bg[j * s + l] : bg[l * s + j]);
        c[row * out + j] = sum;
      }
    }
  }
  return c;
}

TEST(KernelGemm, GroupedGemmWithEmptyGroupMatchesNaive) {
  std::mt19937 gen(4);
  const std::vector<int64_t> offsets = {0, 3, 3, 10, 13, 13};  // groups 1 and 4 are empty
  const int64_t groups = 5, r = 7, s = 5;
  for (bool trans_b : {false, true}) {
    Tensor a = random_uniform({13, trans_b ? s : r}, gen);
    Tensor b = random_uniform({groups, r, s}, gen);
    Tensor c = nan_tensor({13, trans_b ? r : s});
    kernels::grouped_gemm(a, b, trans_b, c, offsets);
    expect_close(c, naive_grouped(a, b, trans_b, offsets), 0.0, 1e-5, "c");
  }
}

TEST(KernelGemm, GroupedGemmWithBetaOneAccumulates) {
  std::mt19937 gen(6);
  const std::vector<int64_t> offsets = {0, 2, 2, 9};  // group 1 is empty
  const int64_t groups = 3, r = 4, s = 6;
  Tensor a = random_uniform({9, s}, gen);
  Tensor b = random_uniform({groups, r, s}, gen);
  Tensor c = random_uniform({9, r}, gen);
  std::vector<double> expected = naive_grouped(a, b, /*trans_b=*/true, offsets);
  const std::vector<float> before = c.to_vector<float>();
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += before[i];
  kernels::grouped_gemm(a, b, true, c, offsets, 1.0f);
  expect_close(c, expected, 0.0, 1e-5, "c");
}

// The pair's sum over both products against the naive products summed, over NaN: c is written, not
// accumulated into; shapes that differ between the pairs are refused.
TEST(KernelGemm, GroupedGemmPairSumsBothProducts) {
  std::mt19937 gen(7);
  const std::vector<int64_t> offsets = {0, 4, 4, 11};  // group 1 is empty
  const int64_t groups = 3, r = 5, s = 6;
  for (bool trans_b : {false, true}) {
    const Tensor a = random_uniform({11, trans_b ? s : r}, gen), a2 = random_uniform(a.shape(), gen);
    const Tensor b = random_uniform({groups, r, s}, gen), b2 = random_uniform(b.shape(), gen);
    Tensor c = nan_tensor({11, trans_b ? r : s});
    kernels::grouped_gemm_pair(a, b, a2, b2, trans_b, c, offsets);
    std::vector<double> expected = naive_grouped(a, b, trans_b, offsets);
    const std::vector<double> second = naive_grouped(a2, b2, trans_b, offsets);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += second[i];
    expect_close(c, expected, 0.0, 1e-5, trans_b ? "c, b^T" : "c, b");
  }
  const Tensor a = random_uniform({11, 6}, gen), b = random_uniform({groups, 5, 6}, gen);
  Tensor c = Tensor::empty({11, 5});
  EXPECT_THROW(kernels::grouped_gemm_pair(a, b, a, random_uniform({groups, 5, 7}, gen), true, c, offsets), Error);
}

TEST(KernelGemm, GroupedWeightGradAccumulatesAndSkipsEmptyGroups) {
  std::mt19937 gen(5);
  const std::vector<int64_t> offsets = {0, 4, 4, 11};  // group 1 is empty
  const int64_t groups = 3, rows = 11, r = 3, s = 13;
  Tensor dc = random_uniform({rows, r}, gen);
  Tensor a = random_uniform({rows, s}, gen);
  Tensor db = random_uniform({groups, r, s}, gen);
  const std::vector<float> before = db.to_vector<float>();
  std::vector<double> expected(before.begin(), before.end());
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t row = offsets[g]; row < offsets[g + 1]; ++row)
      for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < s; ++j)
          expected[(g * r + i) * s + j] +=
              double(dc.data<float>()[row * r + i]) * a.data<float>()[row * s + j];
  kernels::grouped_gemm_wgrad(dc, a, db, offsets);
  expect_close(db, expected, 0.0, 1e-5, "db");
  for (int64_t i = r * s; i < 2 * r * s; ++i)
    EXPECT_EQ(db.data<float>()[i], before[i]) << "empty group changed";
}

TEST(KernelGemm, GroupedGemmRejectsOffsetsNotCoveringRows) {
  Tensor a = Tensor::zeros({5, 2}), b = Tensor::zeros({2, 2, 3}), c = Tensor::zeros({5, 3});
  const std::vector<int64_t> short_of_rows = {0, 2, 4}, too_few_groups = {0, 5};
  EXPECT_THROW(kernels::grouped_gemm(a, b, false, c, short_of_rows), Error);
  EXPECT_THROW(kernels::grouped_gemm(a, b, false, c, too_few_groups), Error);
}

}  // namespace
}  // namespace engram
