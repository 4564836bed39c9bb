// Router kernels against naive double-precision references and finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/router.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using kernels::ScoreFunc;
using namespace testing_util;

// Naive scores of one [n, e] matrix in double.
std::vector<double> naive_scores(const std::vector<double>& logits, int64_t n, int64_t e, ScoreFunc func) {
  std::vector<double> s(logits.size());
  for (int64_t t = 0; t < n; ++t) {
    if (func == ScoreFunc::Sigmoid) {
      for (int64_t j = 0; j < e; ++j) s[t * e + j] = 1.0 / (1.0 + std::exp(-logits[t * e + j]));
      continue;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < e; ++j) sum += std::exp(logits[t * e + j]);
    for (int64_t j = 0; j < e; ++j) s[t * e + j] = std::exp(logits[t * e + j]) / sum;
  }
  return s;
}

const int64_t kSizes[][2] = {{1, 1}, {1, 3}, {7, 13}, {33, 7}};  // {N, E}

TEST(KernelRouter, ScoresMatchNaive) {
  std::mt19937 gen(1);
  for (ScoreFunc func : {ScoreFunc::Sigmoid, ScoreFunc::Softmax}) {
    for (const auto& s : kSizes) {
      Tensor logits = random_uniform({s[0], s[1]}, gen, -4.0f, 4.0f);
      Tensor scores = nan_tensor({s[0], s[1]});
      kernels::router_scores(logits, func, scores);
      expect_close(scores, naive_scores(to_double(logits), s[0], s[1], func), 0.0, 1e-6, "scores");
    }
  }
}

TEST(KernelRouter, ScoresBackwardMatchesFiniteDifferences) {
  std::mt19937 gen(2);
  for (ScoreFunc func : {ScoreFunc::Sigmoid, ScoreFunc::Softmax}) {
    for (const auto& s : kSizes) {
      const int64_t n = s[0], e = s[1];
      Tensor logits = random_uniform({n, e}, gen, -3.0f, 3.0f);
      Tensor g = random_uniform({n, e}, gen);
      Tensor scores = nan_tensor({n, e}), dlogits = nan_tensor({n, e});
      kernels::router_scores(logits, func, scores);
      kernels::router_scores_backward(g, scores, func, dlogits);
      const std::vector<double> gd = to_double(g);
      std::vector<double> x = to_double(logits);
      auto loss = [&] { return dot(gd, naive_scores(x, n, e, func)); };
      expect_close(dlogits, numeric_gradient(x, loss, 1e-5), 0.0, 1e-5, "dlogits");
    }
  }
}

// Naive top-k: sort all experts by (score + bias descending, index ascending), keep k.
std::vector<int32_t> naive_topk(const float* s, const float* b, int64_t e, int k) {
  std::vector<int32_t> order(e);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return s[x] + b[x] > s[y] + b[y]; });
  order.resize(k);
  return order;
}

struct TopK {
  Tensor idx, w;
};
TopK run_topk(const Tensor& scores, const Tensor& bias, int k, bool normalize, float scale) {
  TopK r{poisoned_ids<int32_t>({scores.rows(), k}), nan_tensor({scores.rows(), k})};
  kernels::topk_select(scores, bias, k, normalize, scale, r.idx, r.w);
  return r;
}

TEST(KernelRouter, TopkSelectMatchesNaive) {
  std::mt19937 gen(3);
  for (const auto& s : kSizes) {
    const int64_t n = s[0], e = s[1];
    for (int k : {1, 2, static_cast<int>(e)}) {
      if (k > e) continue;
      for (bool normalize : {false, true}) {
        Tensor scores = random_uniform({n, e}, gen, 0.0f, 1.0f);
        Tensor bias = random_uniform({e}, gen, -0.3f, 0.3f);
        const float scale = 1.7f;
        TopK r = run_topk(scores, bias, k, normalize, scale);
        for (int64_t t = 0; t < n; ++t) {
          const float* st = scores.data<float>() + t * e;
          const std::vector<int32_t> want = naive_topk(st, bias.data<float>(), e, k);
          double sum = 0.0;
          for (int32_t j : want) sum += st[j];
          for (int slot = 0; slot < k; ++slot) {
            ASSERT_EQ(r.idx.data<int32_t>()[t * k + slot], want[slot]) << "token " << t << " slot " << slot;
            const double w = (normalize ? st[want[slot]] / sum : st[want[slot]]) * scale;
            ASSERT_NEAR(r.w.data<float>()[t * k + slot], w, 1e-6);
          }
        }
      }
    }
  }
}

TEST(KernelRouter, TiesGoToTheLowerExpertIndex) {
  // Row 0: all equal. Row 1: three-way tie at the top. Row 2: a tie made by the bias (0.25 + 0.25 == 0.5 + 0).
  Tensor scores = Tensor::from_vector<float>({0.5f, 0.5f, 0.5f, 0.5f, 0.5f,  //
                                              0.3f, 0.7f, 0.7f, 0.2f, 0.7f,  //
                                              0.1f, 0.5f, 0.25f, 0.0f, 0.1f},
                                             {3, 5});
  Tensor bias = Tensor::from_vector<float>({0.0f, 0.0f, 0.25f, 0.0f, 0.0f}, {5});
  Tensor no_bias = Tensor::zeros({5});
  TopK r = run_topk(scores, no_bias, 3, true, 1.0f);
  EXPECT_EQ(r.idx.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 2, 1, 2, 4, 1, 2, 0}));
  // With the bias, row 2's experts 1 and 2 tie at 0.5; row 1's expert 2 moves ahead of 1 and 4.
  TopK rb = run_topk(scores, bias, 2, true, 1.0f);
  EXPECT_EQ(rb.idx.to_vector<int32_t>(), (std::vector<int32_t>{2, 0, 2, 1, 1, 2}));
}

TEST(KernelRouter, BiasChangesSelectionButNotWeights) {
  std::mt19937 gen(4);
  const int64_t n = 13, e = 7;
  const int k = 2;
  Tensor scores = random_uniform({n, e}, gen, 0.01f, 0.5f);
  Tensor bias = Tensor::zeros({e});
  bias.data<float>()[5] = 10.0f;  // expert 5 always wins
  TopK plain = run_topk(scores, Tensor::zeros({e}), k, false, 2.0f);
  TopK biased = run_topk(scores, bias, k, false, 2.0f);
  int changed = 0;
  for (int64_t t = 0; t < n; ++t) {
    const float* st = scores.data<float>() + t * e;
    EXPECT_EQ(biased.idx.data<int32_t>()[t * k], 5);
    changed += plain.idx.data<int32_t>()[t * k] != 5 && plain.idx.data<int32_t>()[t * k + 1] != 5;
    for (int slot = 0; slot < k; ++slot) {
      const int32_t j = biased.idx.data<int32_t>()[t * k + slot];
      EXPECT_EQ(biased.w.data<float>()[t * k + slot], st[j] * 2.0f) << "weight uses the unbiased score";
    }
  }
  EXPECT_GT(changed, 0);
}

TEST(KernelRouter, NormalizedWeightsSumToRoutedScale) {
  std::mt19937 gen(5);
  for (ScoreFunc func : {ScoreFunc::Sigmoid, ScoreFunc::Softmax}) {
    const int64_t n = 33, e = 13;
    Tensor logits = random_uniform({n, e}, gen, -3.0f, 3.0f);
    Tensor scores = nan_tensor({n, e});
    kernels::router_scores(logits, func, scores);
    for (float scale : {1.0f, 2.5f}) {
      TopK r = run_topk(scores, random_uniform({e}, gen, -0.1f, 0.1f), 3, true, scale);
      for (int64_t t = 0; t < n; ++t) {
        double sum = 0.0;
        for (int slot = 0; slot < 3; ++slot) sum += r.w.data<float>()[t * 3 + slot];
        EXPECT_NEAR(sum, scale, 1e-6 * scale);
      }
    }
  }
}

TEST(KernelRouter, TopkWeightsBackwardMatchesFiniteDifferences) {
  std::mt19937 gen(6);
  for (const auto& s : kSizes) {
    const int64_t n = s[0], e = s[1];
    for (int k : {1, 3}) {
      if (k > e) continue;
      for (bool normalize : {false, true}) {
        const float scale = 1.7f;
        Tensor scores = random_uniform({n, e}, gen, 0.05f, 1.0f);
        TopK r = run_topk(scores, random_uniform({e}, gen), k, normalize, scale);
        Tensor g = random_uniform({n, k}, gen);
        Tensor dscores = random_uniform({n, e}, gen);  // accumulated into
        const std::vector<float> before = dscores.to_vector<float>();
        kernels::topk_weights_backward(g, scores, r.idx, normalize, scale, dscores);
        // f(s) = Σ g ⊙ w(s) with the selection held fixed, in double.
        const int32_t* idx = r.idx.data<int32_t>();
        const std::vector<double> gd = to_double(g);
        std::vector<double> sc = to_double(scores);
        auto f = [&] {
          double total = 0.0;
          for (int64_t t = 0; t < n; ++t) {
            double sum = 0.0;
            for (int slot = 0; slot < k; ++slot) sum += sc[t * e + idx[t * k + slot]];
            for (int slot = 0; slot < k; ++slot) {
              const double sk = sc[t * e + idx[t * k + slot]];
              total += gd[t * k + slot] * (normalize ? sk / sum : sk) * scale;
            }
          }
          return total;
        };
        const std::vector<double> fd = numeric_gradient(sc, f, 1e-5);
        for (int64_t i = 0; i < n * e; ++i) {
          const bool selected = std::count(idx + (i / e) * k, idx + (i / e + 1) * k, i % e) > 0;
          if (!selected) {
            ASSERT_EQ(dscores.data<float>()[i], before[i]) << "unselected expert touched at " << i;
          } else {
            ASSERT_NEAR(dscores.data<float>()[i] - before[i], fd[i], 2e-5) << "element " << i;
          }
        }
      }
    }
  }
}

// Σ_i f_i·P_i with f from the fixed selection, in double.
double naive_aux_loss(const std::vector<double>& s, const std::vector<int32_t>& idx, int64_t n, int64_t e,
                      int64_t k) {
  std::vector<double> f(e, 0.0), p(e, 0.0);
  for (int32_t j : idx) f[j] += 1.0 / static_cast<double>(n * k);
  for (int64_t t = 0; t < n; ++t) {
    double sum = 0.0;
    for (int64_t j = 0; j < e; ++j) sum += s[t * e + j];
    for (int64_t j = 0; j < e; ++j) p[j] += s[t * e + j] / sum / static_cast<double>(n);
  }
  return dot(f, p);
}

TEST(KernelRouter, AuxLossAndGradientMatchNaive) {
  std::mt19937 gen(7);
  for (const auto& s : kSizes) {
    const int64_t n = s[0], e = s[1], k = std::min<int64_t>(2, e);
    Tensor scores = random_uniform({n, e}, gen, 0.05f, 1.0f);
    TopK r = run_topk(scores, Tensor::zeros({e}), static_cast<int>(k), true, 1.0f);
    Tensor dscores = random_uniform({n, e}, gen);
    const std::vector<float> before = dscores.to_vector<float>();
    const float grad_scale = 0.37f;
    const double loss = kernels::moe_aux_loss(scores, r.idx, grad_scale, dscores);
    const std::vector<int32_t> idx = r.idx.to_vector<int32_t>();
    EXPECT_NEAR(loss, naive_aux_loss(to_double(scores), idx, n, e, k), 1e-12);
    std::vector<double> x = to_double(scores);
    auto scaled_loss = [&] { return grad_scale * naive_aux_loss(x, idx, n, e, k); };
    expect_close(added(dscores, before), numeric_gradient(x, scaled_loss, 1e-5), 0.0, 1e-6, "dscores");
  }
}

TEST(KernelRouter, AuxLossOfPerfectBalanceWithSoftmaxIsOneOverE) {
  // Uniform softmax scores and a perfectly even load give f_i = P_i = 1/E, so Σ f·P = 1/E.
  const int64_t e = 4, n = 4;
  Tensor scores = Tensor::full({n, e}, 0.25f);
  Tensor idx = Tensor::from_vector<int32_t>({0, 1, 2, 3, 0, 1, 2, 3}, {n, 2});
  Tensor dscores = Tensor::zeros({n, e});
  EXPECT_NEAR(kernels::moe_aux_loss(scores, idx, 1.0f, dscores), 0.25, 1e-12);
}

double naive_z_loss(const std::vector<double>& x, int64_t n, int64_t e) {
  double loss = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    double sum = 0.0;
    for (int64_t j = 0; j < e; ++j) sum += std::exp(x[t * e + j]);
    loss += std::log(sum) * std::log(sum);
  }
  return loss;
}

TEST(KernelRouter, ZLossAndGradientMatchNaive) {
  std::mt19937 gen(8);
  for (const auto& s : kSizes) {
    const int64_t n = s[0], e = s[1];
    Tensor logits = random_uniform({n, e}, gen, -5.0f, 5.0f);
    Tensor dlogits = random_uniform({n, e}, gen);
    const std::vector<float> before = dlogits.to_vector<float>();
    const float grad_scale = 0.25f;
    const double loss = kernels::router_z_loss(logits, grad_scale, dlogits);
    EXPECT_NEAR(loss, naive_z_loss(to_double(logits), n, e), 1e-9 * std::max(1.0, loss));
    std::vector<double> x = to_double(logits);
    auto scaled_loss = [&] { return grad_scale * naive_z_loss(x, n, e); };
    expect_close(added(dlogits, before), numeric_gradient(x, scaled_loss, 1e-5), 0.0, 2e-5, "dlogits");
  }
}

TEST(KernelRouter, RejectsKOutsideExpertCount) {
  Tensor scores = Tensor::full({2, 3}, 0.5f);
  Tensor idx = Tensor::zeros({2, 4}, DType::I32), w = nan_tensor({2, 4});
  EXPECT_THROW(kernels::topk_select(scores, Tensor::zeros({3}), 4, true, 1.0f, idx, w), Error);
}

}  // namespace
}  // namespace engram
