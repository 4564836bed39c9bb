// Dense AdamW and lazy row-sparse Adam: one step against the header's formula evaluated by hand
// in double, and untouched rows of the sparse update bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/adam.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

// One updated value and the sum of the magnitudes of the terms that made it (the scale of its
// float rounding error, which cancellation can make much larger than the value itself).
struct Value {
  double value, scale;
};
struct Element {
  Value p, m, v;
};

// The header's formula for one element, in double.
Element hand_adam(double p, double grad, double m, double v, const kernels::AdamStep& s) {
  const double b1 = s.beta1, b2 = s.beta2, g = grad * s.grad_scale;
  const Value m1{b1 * m + (1.0 - b1) * g, std::fabs(b1 * m) + std::fabs((1.0 - b1) * g)};
  const double v1 = b2 * v + (1.0 - b2) * g * g;
  const double m_hat = m1.value / (1.0 - std::pow(b1, static_cast<double>(s.step)));
  const double v_hat = v1 / (1.0 - std::pow(b2, static_cast<double>(s.step)));
  const double decay = static_cast<double>(s.lr) * s.weight_decay * p;
  const double step = s.lr * m_hat / (std::sqrt(v_hat) + s.eps);
  const Value p1{p - decay - step, std::fabs(p) + std::fabs(decay) + std::fabs(step)};
  return {p1, m1, {v1, v1}};
}

void expect_rel_near(float got, const Value& want, const char* what, int64_t i) {
  EXPECT_NEAR(got, want.value, 1e-6 * want.scale + 1e-12) << what << " element " << i;
}

kernels::AdamStep make_step(float weight_decay, int64_t step) {
  kernels::AdamStep s;
  s.lr = 3e-2f;
  s.weight_decay = weight_decay;
  s.step = step;
  s.grad_scale = 0.5f;
  return s;
}

TEST(KernelAdam, AdamwStepMatchesHandComputation) {
  std::mt19937 gen(1);
  for (float wd : {0.0f, 0.1f}) {
    for (int64_t step : {1, 7}) {
      const kernels::AdamStep s = make_step(wd, step);
      Tensor p = random_uniform({7, 13}, gen, -1.0f, 1.0f), g = random_uniform({7, 13}, gen, -2.0f, 2.0f);
      Tensor m = random_uniform({7, 13}, gen, -0.1f, 0.1f), v = random_uniform({7, 13}, gen, 0.0f, 0.01f);
      const std::vector<float> p0 = p.to_vector<float>(), m0 = m.to_vector<float>(), v0 = v.to_vector<float>();
      kernels::adamw_update(p, g, m, v, s);
      for (int64_t i = 0; i < p.numel(); ++i) {
        const Element want = hand_adam(p0[i], g.data<float>()[i], m0[i], v0[i], s);
        expect_rel_near(p.data<float>()[i], want.p, "param", i);
        expect_rel_near(m.data<float>()[i], want.m, "m", i);
        expect_rel_near(v.data<float>()[i], want.v, "v", i);
      }
    }
  }
}

TEST(KernelAdam, WeightDecayShrinksThePreUpdateValue) {
  // The two runs differ by exactly lr·wd·p (decoupled decay on the pre-update value).
  std::mt19937 gen(2);
  Tensor p = random_uniform({33}, gen, -1.0f, 1.0f), g = random_uniform({33}, gen, -1.0f, 1.0f);
  const Tensor p_initial = p.clone();
  Tensor p_decay = p.clone(), m0 = Tensor::zeros({33}), v0 = Tensor::zeros({33});
  Tensor m1 = Tensor::zeros({33}), v1 = Tensor::zeros({33});
  kernels::adamw_update(p, g, m0, v0, make_step(0.0f, 3));
  kernels::adamw_update(p_decay, g, m1, v1, make_step(0.1f, 3));
  for (int64_t i = 0; i < 33; ++i)
    EXPECT_NEAR(p.data<float>()[i] - p_decay.data<float>()[i], 3e-2 * 0.1 * p_initial.data<float>()[i], 3e-7);
}

TEST(KernelAdam, SparseStepUpdatesListedRowsOnly) {
  std::mt19937 gen(3);
  const int64_t n_rows = 13, c = 5;
  const std::vector<int64_t> listed = {0, 4, 5, 12};
  for (float wd : {0.0f, 0.1f}) {
    const kernels::AdamStep s = make_step(wd, 9);
    Tensor table = random_uniform({n_rows, c}, gen, -1.0f, 1.0f);
    Tensor m = random_uniform({n_rows, c}, gen, -0.1f, 0.1f), v = random_uniform({n_rows, c}, gen, 0.0f, 0.01f);
    Tensor grads = random_uniform({4, c}, gen, -2.0f, 2.0f);
    std::fill_n(grads.data<float>() + 2 * c, c, 0.0f);  // a listed row with zero gradient still decays its moments
    const Tensor t0 = table.clone(), m0 = m.clone(), v0 = v.clone();
    kernels::sparse_adam_update(table, Tensor::from_vector(listed, {4}), grads, m, v, s);
    const float *tp = t0.data<float>(), *mp = m0.data<float>(), *vp = v0.data<float>();
    for (int64_t r = 0; r < n_rows; ++r) {
      const auto it = std::find(listed.begin(), listed.end(), r);
      if (it == listed.end()) {
        EXPECT_TRUE(bitwise_equal(table.slice(r, r + 1), t0.slice(r, r + 1))) << "table row " << r;
        EXPECT_TRUE(bitwise_equal(m.slice(r, r + 1), m0.slice(r, r + 1))) << "m row " << r;
        EXPECT_TRUE(bitwise_equal(v.slice(r, r + 1), v0.slice(r, r + 1))) << "v row " << r;
        continue;
      }
      const int64_t u = it - listed.begin();
      for (int64_t j = 0; j < c; ++j) {
        const int64_t i = r * c + j;
        const Element want = hand_adam(tp[i], grads.data<float>()[u * c + j], mp[i], vp[i], s);
        expect_rel_near(table.data<float>()[i], want.p, "table", i);
        expect_rel_near(m.data<float>()[i], want.m, "m", i);
        expect_rel_near(v.data<float>()[i], want.v, "v", i);
      }
      EXPECT_FALSE(bitwise_equal(m.slice(r, r + 1), m0.slice(r, r + 1)))
          << "listed row " << r << " kept its moments";
    }
  }
}

TEST(KernelAdam, SparseMatchesDenseOnTheListedRows) {
  // A sparse step on some rows equals a dense step on the same rows, bit for bit (one shared formula).
  std::mt19937 gen(4);
  const int64_t c = 7;
  Tensor table = random_uniform({3, c}, gen, -1.0f, 1.0f), grads = random_uniform({3, c}, gen, -1.0f, 1.0f);
  Tensor m = random_uniform({3, c}, gen, -0.1f, 0.1f), v = random_uniform({3, c}, gen, 0.0f, 0.01f);
  Tensor dense = table.clone(), dm = m.clone(), dv = v.clone();
  const kernels::AdamStep s = make_step(0.0f, 2);
  kernels::sparse_adam_update(table, Tensor::from_vector<int64_t>({0, 1, 2}, {3}), grads, m, v, s);
  kernels::adamw_update(dense, grads, dm, dv, s);
  EXPECT_TRUE(bitwise_equal(table, dense));
  EXPECT_TRUE(bitwise_equal(m, dm));
  EXPECT_TRUE(bitwise_equal(v, dv));
}

TEST(KernelAdam, RejectsBadRowsAndStep) {
  Tensor table = Tensor::zeros({4, 2}), m = Tensor::zeros({4, 2}), v = Tensor::zeros({4, 2});
  Tensor grads = Tensor::zeros({2, 2});
  const kernels::AdamStep s = make_step(0.0f, 1);
  EXPECT_THROW(kernels::sparse_adam_update(table, Tensor::from_vector<int64_t>({2, 1}, {2}), grads, m, v, s), Error);
  EXPECT_THROW(kernels::sparse_adam_update(table, Tensor::from_vector<int64_t>({1, 1}, {2}), grads, m, v, s), Error);
  EXPECT_THROW(kernels::sparse_adam_update(table, Tensor::from_vector<int64_t>({0, 4}, {2}), grads, m, v, s), Error);
  Tensor p = Tensor::zeros({3}), g = Tensor::zeros({3}), m1 = Tensor::zeros({3}), v1 = Tensor::zeros({3});
  EXPECT_THROW(kernels::adamw_update(p, g, m1, v1, make_step(0.0f, 0)), Error);
}

}  // namespace
}  // namespace engram
