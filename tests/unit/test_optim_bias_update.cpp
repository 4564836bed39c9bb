// Balancing-bias update (MODEL.md §3): signs checked by hand, then random loads against a naive loop.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "optim/bias_update.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

TEST(BalancingBias, OverloadedDownUnderloadedUpEqualStays) {
  const std::vector<float> start = {0.1f, -0.2f, 0.0f, 0.3f, -0.0f};
  Tensor bias = Tensor::from_vector(start, {5});
  // mean load 6: expert 0 overloaded, 1 underloaded, 2..4 exactly at the mean
  update_balancing_bias(bias, {10, 2, 6, 6, 6}, 1e-3f);
  const std::vector<float> expected = {0.1f - 1e-3f, -0.2f + 1e-3f, 0.0f, 0.3f, -0.0f};
  EXPECT_TRUE(bitwise_equal(bias, Tensor::from_vector(expected, {5})));  // -0.0 keeps its sign
  const std::vector<float> got = bias.to_vector<float>();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got[i], expected[i]) << i;
}

TEST(BalancingBias, FractionalMeanAndRepeatedSteps) {
  Tensor bias = Tensor::zeros({2});
  update_balancing_bias(bias, {1, 2}, 0.5f);  // mean 1.5
  update_balancing_bias(bias, {1, 2}, 0.5f);
  EXPECT_EQ(bias.data<float>()[0], 1.0f);
  EXPECT_EQ(bias.data<float>()[1], -1.0f);
}

TEST(BalancingBias, RateZeroAndBalancedLoadsAreNoOps) {
  const std::vector<float> start = {0.25f, -0.5f, 0.75f};
  Tensor bias = Tensor::from_vector(start, {3});
  update_balancing_bias(bias, {100, 0, 7}, 0.0f);
  EXPECT_EQ(bias.to_vector<float>(), start);
  update_balancing_bias(bias, {4, 4, 4}, 1e-3f);
  EXPECT_EQ(bias.to_vector<float>(), start);
}

TEST(BalancingBias, RandomLoadsMatchNaiveLoop) {
  std::mt19937 gen(4);
  std::uniform_int_distribution<int64_t> dist(0, 20);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  for (int e : {1, 3, 7, 13, 33}) {
    std::vector<int64_t> load(e);
    std::vector<float> start(e);
    for (int i = 0; i < e; ++i) {
      load[i] = dist(gen);
      start[i] = normal(gen);
    }
    Tensor bias = Tensor::from_vector(start, {e});
    update_balancing_bias(bias, load, 2e-3f);
    double mean = 0.0;
    for (int64_t l : load) mean += static_cast<double>(l) / e;
    for (int i = 0; i < e; ++i) {
      float want = start[i];
      if (static_cast<double>(load[i]) < mean - 1e-9) want += 2e-3f;
      if (static_cast<double>(load[i]) > mean + 1e-9) want -= 2e-3f;
      EXPECT_EQ(bias.data<float>()[i], want) << "E " << e << " expert " << i;
    }
  }
}

TEST(BalancingBias, SizeMismatchIsRejected) {
  Tensor bias = Tensor::zeros({3});
  EXPECT_THROW(update_balancing_bias(bias, {1, 2}, 1e-3f), Error);
}

}  // namespace
}  // namespace engram
