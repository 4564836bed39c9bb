// Merging per-micro-batch row grads, the global gradient norm and the clip factor, against naive
// references written out here.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "kernels/elementwise.h"
#include "optim/grad_norm.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

RowGrads random_row_grads(const std::vector<int64_t>& rows, int64_t cols, std::mt19937& gen) {
  const int64_t u = static_cast<int64_t>(rows.size());
  RowGrads g{Tensor::from_vector(rows, {u}), Tensor::empty({u, cols})};
  fill_normal(g.values, gen);
  return g;
}

// Naive merge: per row, add the entries' values in list order (float, as the optimizer sees them).
std::map<int64_t, std::vector<float>> naive_merge(const std::vector<RowGrads>& entries, int64_t cols) {
  std::map<int64_t, std::vector<float>> sum;
  for (const RowGrads& e : entries)
    for (int64_t k = 0; k < e.rows.numel(); ++k) {
      std::vector<float>& acc = sum.try_emplace(e.rows.data<int64_t>()[k], cols, 0.0f).first->second;
      for (int64_t c = 0; c < cols; ++c) acc[c] += e.values.data<float>()[k * cols + c];
    }
  return sum;
}

TEST(MergeRowGrads, OverlappingMicroBatchesSumPerRow) {
  std::mt19937 gen(1);
  const int64_t cols = 3;
  ParameterRegistry reg;
  Parameter& table = reg.add("table", {13, cols}, OptimGroup::SparseTable, {});
  Parameter& single = reg.add("single", {7, cols}, OptimGroup::SparseTable, {});
  Parameter& dense = reg.add("dense", {5}, OptimGroup::Decay, {});
  table.row_grads = {random_row_grads({1, 4, 7}, cols, gen), random_row_grads({}, cols, gen),
                     random_row_grads({0, 4, 7, 12}, cols, gen), random_row_grads({4}, cols, gen)};
  single.row_grads = {random_row_grads({2, 5}, cols, gen)};
  const auto expected = naive_merge(table.row_grads, cols);
  const Tensor single_values = single.row_grads[0].values;

  merge_row_grads(reg);

  ASSERT_EQ(table.row_grads.size(), 1u);
  const RowGrads& merged = table.row_grads[0];
  ASSERT_EQ(merged.rows.numel(), static_cast<int64_t>(expected.size()));
  ASSERT_EQ(merged.values.shape(), (Shape{merged.rows.numel(), cols}));
  int64_t k = 0;
  for (const auto& [row, sum] : expected) {  // std::map: ascending rows
    EXPECT_EQ(merged.rows.data<int64_t>()[k], row);
    for (int64_t c = 0; c < cols; ++c)  // same additions in the same order: exact
      EXPECT_EQ(merged.values.data<float>()[k * cols + c], sum[c]) << "row " << row << " col " << c;
    ++k;
  }
  // A single entry is left as it is; dense parameters have no row grads to merge.
  ASSERT_EQ(single.row_grads.size(), 1u);
  EXPECT_EQ(single.row_grads[0].values.raw(), single_values.raw());
  EXPECT_TRUE(dense.row_grads.empty());
}

TEST(GlobalGradNorm, DenseGradsPlusEachMergedTableRowOnceWithoutNotTrained) {
  std::mt19937 gen(2);
  ParameterRegistry reg;
  Parameter& w = reg.add("w", {7, 3}, OptimGroup::Decay, {});
  Parameter& gain = reg.add("gain", {5}, OptimGroup::NoDecay, {});
  Parameter& table = reg.add("table", {13, 3}, OptimGroup::SparseTable, {});
  Parameter& bias = reg.add("bias", {3}, OptimGroup::NotTrained, {});
  fill_normal(w.grad, gen);
  fill_normal(gain.grad, gen);
  bias.grad = Tensor::full({3}, 100.0f);  // would dominate the norm if it were counted
  table.row_grads = {random_row_grads({0, 6, 9}, 3, gen), random_row_grads({6, 9, 12}, 3, gen)};

  // Naive: overlapping rows summed first (in double here), then every row squared once.
  double expected = 0.0;
  for (const Tensor* g : {&w.grad, &gain.grad})
    for (int64_t i = 0; i < g->numel(); ++i) expected += static_cast<double>(g->data<float>()[i]) * g->data<float>()[i];
  std::map<int64_t, std::vector<double>> rows;
  for (const RowGrads& e : table.row_grads)
    for (int64_t k = 0; k < e.rows.numel(); ++k) {
      std::vector<double>& acc = rows.try_emplace(e.rows.data<int64_t>()[k], 3, 0.0).first->second;
      for (int64_t c = 0; c < 3; ++c) acc[c] += e.values.data<float>()[k * 3 + c];
    }
  for (const auto& [row, sum] : rows)
    for (double x : sum) expected += x * x;
  expected = std::sqrt(expected);

  EXPECT_THROW(global_grad_norm(reg), Error);  // two entries: not merged yet
  merge_row_grads(reg);
  const double norm = global_grad_norm(reg);
  EXPECT_NEAR(norm, expected, 1e-6 * expected);

  // Without tables' grads at all the norm is the dense part alone.
  table.row_grads.clear();
  double dense_only = 0.0;
  for (const Tensor* g : {&w.grad, &gain.grad}) dense_only += kernels::sum_squares(*g);
  EXPECT_NEAR(global_grad_norm(reg), std::sqrt(dense_only), 1e-12);
}

TEST(ClipFactor, ScalesDownOnlyAboveTheThreshold) {
  EXPECT_EQ(clip_factor(123.0, 0.0f), 1.0f);   // disabled
  EXPECT_EQ(clip_factor(123.0, -1.0f), 1.0f);  // disabled
  EXPECT_EQ(clip_factor(0.0, 1.0f), 1.0f);
  EXPECT_EQ(clip_factor(0.5, 1.0f), 1.0f);
  EXPECT_FLOAT_EQ(clip_factor(4.0, 1.0f), static_cast<float>(1.0 / (4.0 + 1e-6)));
  EXPECT_FLOAT_EQ(clip_factor(10.0, 2.5f), 0.25f);
  EXPECT_LT(clip_factor(1.0, 1.0f), 1.0f);  // the 1e-6 guard makes norm == max_norm clip a hair
}

}  // namespace
}  // namespace engram
