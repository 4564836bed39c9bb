// sort_by_expert and the expert-output combine (and its backward) against naive loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "kernels/embedding.h"
#include "kernels/permute.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

// Each token picks k distinct experts among the first `used` of n_experts (the rest stay empty).
Tensor random_topk(int64_t n, int k, int used, std::mt19937& gen) {
  std::vector<int32_t> idx;
  std::vector<int32_t> experts(used);
  for (int64_t t = 0; t < n; ++t) {
    for (int e = 0; e < used; ++e) experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), gen);
    idx.insert(idx.end(), experts.begin(), experts.begin() + k);
  }
  return Tensor::from_vector(idx, {n, k});
}

const int kShapes[][4] = {{1, 1, 1, 1}, {13, 3, 7, 5}, {33, 2, 13, 13}, {7, 4, 4, 4}};  // {N, K, E, experts used}

TEST(KernelPermute, SortByExpertMatchesNaiveStableSort) {
  std::mt19937 gen(1);
  for (const auto& s : kShapes) {
    const int64_t n = s[0];
    const int k = s[1], e = s[2];
    Tensor topk = random_topk(n, k, s[3], gen);
    kernels::ExpertSort sorted = kernels::sort_by_expert(topk, e);
    // Naive: sort the (expert, a) pairs.
    std::vector<std::pair<int32_t, int64_t>> pairs;
    for (int64_t a = 0; a < n * k; ++a) pairs.emplace_back(topk.data<int32_t>()[a], a);
    std::sort(pairs.begin(), pairs.end());
    ASSERT_EQ(sorted.sorted_token.numel(), n * k);
    ASSERT_EQ(sorted.position.numel(), n * k);
    for (int64_t p = 0; p < n * k; ++p) {
      ASSERT_EQ(sorted.sorted_token.data<int32_t>()[p], pairs[p].second / k) << "sorted position " << p;
      ASSERT_EQ(sorted.position.data<int32_t>()[pairs[p].second], p) << "assignment " << pairs[p].second;
    }
    ASSERT_EQ(sorted.offsets.size(), static_cast<size_t>(e + 1));
    EXPECT_EQ(sorted.offsets[0], 0);
    for (int x = 0; x < e; ++x) {
      const int64_t count = std::count(topk.data<int32_t>(), topk.data<int32_t>() + n * k, x);
      EXPECT_EQ(sorted.offsets[x + 1] - sorted.offsets[x], count) << "expert " << x;
      for (int64_t p = sorted.offsets[x]; p < sorted.offsets[x + 1]; ++p) ASSERT_EQ(pairs[p].first, x);
    }
  }
}

TEST(KernelPermute, SortByExpertRejectsUnknownExpert) {
  Tensor topk = Tensor::from_vector<int32_t>({0, 1, 4, 2}, {2, 2});
  EXPECT_THROW(kernels::sort_by_expert(topk, 4), Error);
  Tensor negative = Tensor::from_vector<int32_t>({0, -1}, {1, 2});
  EXPECT_THROW(kernels::sort_by_expert(negative, 4), Error);
}

// y[t] = Σ_k w[t,k]·eo[position[t·K+k]] in double.
std::vector<double> naive_combine(const std::vector<double>& eo, const Tensor& position, const std::vector<double>& w,
                                  int64_t n, int64_t k, int64_t d) {
  std::vector<double> y(n * d, 0.0);
  const int32_t* pos = position.data<int32_t>();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t slot = 0; slot < k; ++slot)
      for (int64_t j = 0; j < d; ++j) y[t * d + j] += w[t * k + slot] * eo[pos[t * k + slot] * d + j];
  return y;
}

TEST(KernelPermute, CombineMatchesNaiveOntoWhatTheOutputHoldsAndWithoutWeights) {
  std::mt19937 gen(2);
  for (const auto& s : kShapes) {
    const int64_t n = s[0], k = s[1];
    for (int64_t d : {1, 7, 33}) {
      kernels::ExpertSort sorted = kernels::sort_by_expert(random_topk(n, s[1], s[3], gen), s[2]);
      Tensor eo = random_uniform({n * k, d}, gen);
      Tensor w = random_uniform({n, k}, gen, 0.0f, 1.0f);
      Tensor y = nan_tensor({n, d});
      const std::vector<double> expected = naive_combine(to_double(eo), sorted.position, to_double(w), n, k, d);
      kernels::combine_expert_outputs(eo, sorted.position, w, y);
      expect_close(y, expected, 0.0, 1e-6, "y");
      // Accumulating: added onto what y holds.
      Tensor onto = random_uniform({n, d}, gen);
      std::vector<double> expected_onto = to_double(onto);
      for (size_t i = 0; i < expected.size(); ++i) expected_onto[i] += expected[i];
      kernels::combine_expert_outputs(eo, sorted.position, w, onto, /*accumulate=*/true);
      expect_close(onto, expected_onto, 0.0, 1e-6, "y accumulated");
      // Without weights: each token's rows summed.
      Tensor sums = nan_tensor({n, d});
      kernels::combine_expert_outputs(eo, sorted.position, Tensor(), sums);
      expect_close(sums, naive_combine(to_double(eo), sorted.position, std::vector<double>(n * k, 1.0), n, k, d), 0.0,
                   1e-6, "y without weights");
    }
  }
}

// Without weights the tokens come from y: positions must hold N·K of them.
TEST(KernelPermute, CombineWithoutWeightsNeedsKRowsPerToken) {
  Tensor y = Tensor::zeros({3, 2});
  EXPECT_THROW(kernels::combine_expert_outputs(Tensor::zeros({7, 2}), Tensor::zeros({7}, DType::I32), Tensor(), y),
               Error);
}

TEST(KernelPermute, IdentityExpertsGiveInputTimesWeightSum) {
  // expert_out = x gathered by sorted_token (every expert the identity) ⇒ y = x·Σ_k w.
  std::mt19937 gen(3);
  for (const auto& s : kShapes) {
    const int64_t n = s[0], k = s[1], d = 13;
    kernels::ExpertSort sorted = kernels::sort_by_expert(random_topk(n, s[1], s[3], gen), s[2]);
    Tensor x = random_uniform({n, d}, gen);
    Tensor w = random_uniform({n, k}, gen, 0.0f, 1.0f);
    Tensor eo = nan_tensor({n * k, d});
    kernels::embedding_gather(x, sorted.sorted_token, eo);
    Tensor y = nan_tensor({n, d});
    kernels::combine_expert_outputs(eo, sorted.position, w, y);
    for (int64_t t = 0; t < n; ++t) {
      double wsum = 0.0;
      for (int64_t slot = 0; slot < k; ++slot) wsum += w.data<float>()[t * k + slot];
      for (int64_t j = 0; j < d; ++j) ASSERT_NEAR(y.data<float>()[t * d + j], x.data<float>()[t * d + j] * wsum, 1e-6);
    }
  }
}

TEST(KernelPermute, GatherThenCombineWithUnitWeightsRoundTrips) {
  // Weights that sum to one per token: permute, identity experts, unpermute gives x back.
  std::mt19937 gen(4);
  const int64_t n = 33, k = 4, d = 7;
  kernels::ExpertSort sorted = kernels::sort_by_expert(random_topk(n, k, 13, gen), 13);
  Tensor x = random_uniform({n, d}, gen);
  Tensor w = Tensor::full({n, k}, 0.25f);
  Tensor eo = nan_tensor({n * k, d});
  kernels::embedding_gather(x, sorted.sorted_token, eo);
  // Every sorted row holds its own token's vector.
  for (int64_t a = 0; a < n * k; ++a)
    for (int64_t j = 0; j < d; ++j)
      ASSERT_EQ(eo.data<float>()[sorted.position.data<int32_t>()[a] * d + j], x.data<float>()[(a / k) * d + j]);
  Tensor y = nan_tensor({n, d});
  kernels::combine_expert_outputs(eo, sorted.position, w, y);
  expect_close(y, to_double(x), 0.0, 1e-6, "y");
}

TEST(KernelPermute, CombineBackwardMatchesFiniteDifferences) {
  std::mt19937 gen(5);
  for (const auto& s : kShapes) {
    const int64_t n = s[0], k = s[1], d = 7;
    kernels::ExpertSort sorted = kernels::sort_by_expert(random_topk(n, s[1], s[3], gen), s[2]);
    Tensor eo = random_uniform({n * k, d}, gen);
    Tensor w = random_uniform({n, k}, gen, 0.0f, 1.0f);
    Tensor dy = random_uniform({n, d}, gen);
    Tensor deo = nan_tensor({n * k, d}), dw = nan_tensor({n, k});
    kernels::combine_expert_outputs_backward(dy, eo, sorted.position, w, deo, dw);

    // f(eo, w) = Σ dy ⊙ combine(eo, w), differentiated numerically in double.
    const std::vector<double> g = to_double(dy);
    std::vector<double> eo_d = to_double(eo), w_d = to_double(w);
    auto f = [&] { return dot(g, naive_combine(eo_d, sorted.position, w_d, n, k, d)); };
    const double h = 1e-3;  // f is bilinear: central differences are exact up to rounding
    expect_close(deo, numeric_gradient(eo_d, f, h), 0.0, 1e-6, "d_expert_out");
    expect_close(dw, numeric_gradient(w_d, f, h), 0.0, 1e-5, "d_topk_w");
  }
}

}  // namespace
}  // namespace engram
