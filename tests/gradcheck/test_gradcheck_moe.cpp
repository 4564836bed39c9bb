// Finite-difference check of MoELayer::backward on L = Σ dy ⊙ y + aux + z (the weighted aux terms
// the layer reports): dx, the router weights (through the selected scores and the aux terms), the
// routed experts and the shared expert, for both score functions, with and without normalization,
// aux loss and z-loss. One expert is never selected, so a zero-token expert is always exercised.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "model/moe.h"
#include "tests/gradcheck/finite_difference.h"

namespace engram {
namespace {

using test::check_gradient;
using test::Eval;

struct Case {
  config::ScoreFunc score_func;
  bool normalize;
  float aux_coeff;
  float z_coeff;
  int shared;
  float routed_scale;
  bool only_aux_terms = false;  // dy = 0: L is the aux + z terms alone, so their gradients stand out
};

ModelConfig moe_config(const Case& c, int d, int n_experts, int top_k, int d_ff) {
  ModelConfig cfg;
  cfg.set_vocab_size(32);
  cfg.set_d_model(d);
  cfg.set_n_layers(3);
  cfg.set_n_heads(1);
  cfg.set_n_dense_layers(1);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(n_experts);
  moe->set_top_k(top_k);
  moe->set_expert_d_ff(d_ff);
  moe->set_n_shared_experts(c.shared);
  moe->set_score_func(c.score_func);
  moe->set_normalize_topk(c.normalize);
  moe->set_routed_scale(c.routed_scale);
  moe->set_aux_loss_coeff(c.aux_coeff);
  moe->set_z_loss_coeff(c.z_coeff);
  return cfg;
}

// The top-k selection recomputed in double from the same inputs: its hash is the branch of the
// forward; it is ambiguous when the k-th and (k+1)-th biased scores of a token nearly tie.
Eval selection(const Tensor& x, const Tensor& router, const Tensor& bias, config::ScoreFunc func, int k) {
  const int64_t n = x.rows(), d = x.cols(), e = router.rows();
  const float* px = x.data<float>();
  const float* pw = router.data<float>();
  const float* pb = bias.data<float>();
  Eval out;
  std::vector<double> logit(e), key(e);
  std::vector<int> order(e);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < e; ++j) {
      logit[j] = 0.0;
      for (int64_t c = 0; c < d; ++c) logit[j] += static_cast<double>(px[t * d + c]) * pw[j * d + c];
    }
    const double mx = *std::max_element(logit.begin(), logit.end());
    double z = 0.0;
    for (int64_t j = 0; j < e; ++j) z += std::exp(logit[j] - mx);
    for (int64_t j = 0; j < e; ++j) {
      const double s = func == config::SIGMOID ? 1.0 / (1.0 + std::exp(-logit[j])) : std::exp(logit[j] - mx) / z;
      key[j] = s + pb[j];
    }
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
    if (k < e && key[order[k - 1]] - key[order[k]] < 1e-5) out.ambiguous = true;
    std::sort(order.begin(), order.begin() + k);
    for (int slot = 0; slot < k; ++slot) out.branch = out.branch * 1000003u + static_cast<uint64_t>(order[slot]);
  }
  return out;
}

void check_moe(const Case& c, unsigned seed) {
  const int64_t n = 13, d = 7, n_experts = 5, k = 2, d_ff = 3;
  const ModelConfig cfg = moe_config(c, d, n_experts, k, d_ff);
  std::mt19937 rng(seed);
  ParameterRegistry params;
  MoELayer moe(cfg, 1, params);

  // Non-trivial values everywhere; prefilled gradients check that backward accumulates.
  for (Parameter* p : params.all()) {
    test::fill_normal(p->value, rng, 0.0, 0.5);
    if (p->grad.defined()) test::fill_normal(p->grad, rng);
  }
  Tensor& bias = moe.balancing_bias().value;
  ASSERT_FALSE(moe.balancing_bias().grad.defined());
  test::fill_normal(bias, rng, 0.0, 0.1);
  bias.data<float>()[n_experts - 1] = -50.0f;  // never selected: zero tokens
  const test::GradientSnapshot grad_before(params);

  const LossWeights weights{0.37f, 0.61f};
  Tensor x = test::random_normal({n, d}, rng);
  Tensor dy = test::random_normal({n, d}, rng);
  if (c.only_aux_terms) dy.zero_();
  moe.forward(x, weights);
  const Tensor dx = moe.backward(dy);
  ASSERT_EQ(dx.shape(), x.shape());

  const auto& load = moe.last_load();
  ASSERT_EQ(static_cast<int64_t>(load.size()), n_experts);
  EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t{0}), n * k);
  EXPECT_EQ(load[n_experts - 1], 0);
  EXPECT_EQ(moe.last_aux_loss() > 0.0, c.aux_coeff > 0);  // exactly 0 when off
  EXPECT_EQ(moe.last_z_loss() > 0.0, c.z_coeff > 0);
  EXPECT_GE(moe.last_aux_loss(), 0.0);
  EXPECT_GE(moe.last_z_loss(), 0.0);

  const Tensor& router = params.get("layers.1.moe.router.weight").value;
  auto evaluate = [&] {
    const Tensor y = moe.forward(x, weights);
    Eval e = selection(x, router, bias, c.score_func, static_cast<int>(k));
    e.loss = test::dot(dy, y) + moe.last_aux_loss() + moe.last_z_loss();
    return e;
  };
  test::FdOptions opt;
  if (c.only_aux_terms) opt.atol = 1e-5;  // small loss, small rounding noise
  auto expect_mostly_checked = [&](const test::FdResult& r, const std::string& what) {
    EXPECT_GE(r.checked, 4 * (r.checked + r.skipped) / 5) << what << ": too many top-k switches";
    // With dy = 0 only the router path carries gradient.
    if (!c.only_aux_terms || what == "dx" || what.find("router") != std::string::npos) {
      EXPECT_GT(r.max_abs_grad, 0.0) << what;
    }
  };
  expect_mostly_checked(check_gradient("dx", x, dx.to_vector<float>(), evaluate, rng, opt), "dx");
  for (Parameter* p : params.all()) {
    if (!p->grad.defined()) continue;
    const auto r = check_gradient(p->name, p->value, grad_before.added(*p), evaluate, rng, opt);
    expect_mostly_checked(r, p->name);
  }

  // The unselected expert's weights get exactly nothing.
  for (const char* leaf : {"w1", "w3", "w2"}) {
    const Parameter& p = params.get(std::string("layers.1.moe.experts.") + leaf);
    const int64_t per_expert = p.grad.numel() / n_experts;
    const std::vector<float> added = grad_before.added(p);
    for (int64_t j = (n_experts - 1) * per_expert; j < p.grad.numel(); ++j)
      ASSERT_EQ(added[j], 0.0f) << p.name << " element " << j;
  }
}

TEST(GradcheckMoe, SigmoidNormalizedNoAux) { check_moe({config::SIGMOID, true, 0.0f, 0.0f, 1, 1.0f}, 1); }
TEST(GradcheckMoe, SigmoidUnnormalizedAuxAndZ) { check_moe({config::SIGMOID, false, 0.3f, 0.2f, 2, 1.7f}, 2); }
TEST(GradcheckMoe, SigmoidNormalizedAuxAndZ) { check_moe({config::SIGMOID, true, 0.3f, 0.2f, 1, 2.5f}, 3); }
TEST(GradcheckMoe, SoftmaxNormalizedAuxOnly) { check_moe({config::SOFTMAX, true, 0.3f, 0.0f, 0, 1.0f}, 4); }
TEST(GradcheckMoe, SoftmaxUnnormalizedZOnly) { check_moe({config::SOFTMAX, false, 0.0f, 0.2f, 1, 1.3f}, 5); }
TEST(GradcheckMoe, SoftmaxNormalizedAuxAndZNoShared) { check_moe({config::SOFTMAX, true, 0.5f, 0.3f, 0, 1.0f}, 6); }
TEST(GradcheckMoe, SigmoidAuxTermsAlone) { check_moe({config::SIGMOID, true, 0.3f, 0.2f, 1, 1.0f, true}, 7); }
TEST(GradcheckMoe, SoftmaxAuxTermsAlone) { check_moe({config::SOFTMAX, false, 0.3f, 0.2f, 1, 1.0f, true}, 8); }
TEST(GradcheckMoe, SigmoidAuxAlone) { check_moe({config::SIGMOID, false, 0.3f, 0.0f, 0, 1.0f, true}, 9); }
TEST(GradcheckMoe, SigmoidZAlone) { check_moe({config::SIGMOID, true, 0.0f, 0.2f, 0, 1.0f, true}, 10); }

}  // namespace
}  // namespace engram
