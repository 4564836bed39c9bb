// Sharding-invariant initialization (MODEL.md §5) and the Tensor basics it relies on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "runtime/init.h"
#include "runtime/parameters.h"
#include "runtime/rng.h"

namespace engram {
namespace {

TEST(Tensor, ViewsAndSlicesShareStorage) {
  Tensor t = Tensor::zeros({4, 3});
  Tensor rows = t.slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  rows.data<float>()[0] = 5.0f;
  EXPECT_EQ(t.data<float>()[3], 5.0f);
  Tensor flat = t.view({-1});
  EXPECT_EQ(flat.shape(), (Shape{12}));
  EXPECT_EQ(t.rows(), 4);
  EXPECT_EQ(t.view({2, 2, 3}).rows(), 4);
  Tensor copy = t.clone();
  copy.data<float>()[3] = 1.0f;
  EXPECT_EQ(t.data<float>()[3], 5.0f);
  EXPECT_THROW(t.view({5, 3}), Error);
  EXPECT_THROW(t.slice(2, 5), Error);
  EXPECT_THROW(t.data<int32_t>(), Error);
}

TEST(Rng, SplitMixCounterMatchesSequential) {
  uint64_t state = 12345;
  for (uint64_t k = 1; k <= 10; ++k) EXPECT_EQ(splitmix64_next(state), splitmix64_at(12345, k));
}

// A slice of rows initialized on its own equals the same rows of the full initialization.
void expect_slice_matches(const Shape& shape, int64_t begin, int64_t end, const InitSpec& spec) {
  Tensor full = Tensor::empty(shape);
  init_parameter(full, 7, "layers.3.engram.table", spec);
  Shape part_shape = shape;
  part_shape[0] = end - begin;
  Tensor part = Tensor::empty(part_shape);
  const int64_t row = full.numel() / shape[0];
  init_parameter(part, 7, "layers.3.engram.table", spec, begin * row);
  Tensor expected = full.slice(begin, end);
  EXPECT_EQ(std::memcmp(part.raw(), expected.raw(), part.nbytes()), 0);
}

TEST(Init, TableRowSliceEqualsFullSlice) {
  expect_slice_matches({101, 8}, 0, 37, {InitKind::Normal, 0.02});
  expect_slice_matches({101, 8}, 37, 101, {InitKind::Normal, 0.02});
  expect_slice_matches({101, 8}, 50, 51, {InitKind::Normal, 0.02});
}

TEST(Init, ExpertBlockEqualsFullSlice) {
  expect_slice_matches({8, 6, 5}, 2, 4, {InitKind::Normal, 0.01});
  expect_slice_matches({8, 6, 5}, 6, 8, {InitKind::Ones, 0});
}

TEST(Init, RegistryShardsMatchTheUnshardedRegistry) {
  ParameterRegistry whole, shard0, shard1;
  const Shape shape{10, 4, 3};
  whole.add("layers.1.moe.experts.w1", shape, OptimGroup::Decay, {InitKind::Normal, 0.02});
  shard0.add("layers.1.moe.experts.w1", shape, OptimGroup::Decay, {InitKind::Normal, 0.02}, ShardKind::Experts, 0, 5);
  shard1.add("layers.1.moe.experts.w1", shape, OptimGroup::Decay, {InitKind::Normal, 0.02}, ShardKind::Experts, 5, 5);
  for (auto* r : {&whole, &shard0, &shard1}) r->initialize(3);
  const Tensor& w = whole.get("layers.1.moe.experts.w1").value;
  const Tensor& a = shard0.get("layers.1.moe.experts.w1").value;
  const Tensor& b = shard1.get("layers.1.moe.experts.w1").value;
  EXPECT_EQ(std::memcmp(a.raw(), w.slice(0, 5).raw(), a.nbytes()), 0);
  EXPECT_EQ(std::memcmp(b.raw(), w.slice(5, 10).raw(), b.nbytes()), 0);
}

TEST(Init, NormalHasTheRequestedMomentsAndDependsOnNameAndSeed) {
  const int64_t n = 200000;
  Tensor a = Tensor::empty({n});
  init_parameter(a, 0, "w", {InitKind::Normal, 0.02});
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += a.data<float>()[i];
    sq += double(a.data<float>()[i]) * a.data<float>()[i];
  }
  const double mean = sum / n, stdev = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 5 * 0.02 / std::sqrt(double(n)));
  EXPECT_NEAR(stdev, 0.02, 0.02 * 0.01);

  Tensor b = Tensor::empty({n}), c = Tensor::empty({n});
  init_parameter(b, 0, "w2", {InitKind::Normal, 0.02});
  init_parameter(c, 1, "w", {InitKind::Normal, 0.02});
  int same_b = 0, same_c = 0;
  for (int64_t i = 0; i < n; ++i) {
    same_b += a.data<float>()[i] == b.data<float>()[i];
    same_c += a.data<float>()[i] == c.data<float>()[i];
  }
  EXPECT_LT(same_b, 10);
  EXPECT_LT(same_c, 10);
}

TEST(Init, OnesAndZeros) {
  Tensor t = Tensor::full({5}, 3.0f);
  init_parameter(t, 0, "g", {InitKind::Ones});
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 1.0f);
  init_parameter(t, 0, "b", {InitKind::Zeros});
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace engram
