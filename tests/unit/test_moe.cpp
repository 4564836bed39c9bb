// MoELayer forward against a naive double-precision reference (routing, weights, experts, shared
// expert, onto a residual, loads, aux and z-loss values), the identical-experts identity, lower-index tie breaking,
// zero-token experts, and the balancing-bias update evening out a skewed router.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "model/moe.h"
#include "optim/bias_update.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using testing_util::random_normal;

void fill_normal(Tensor& t, std::mt19937& rng, double std) { testing_util::fill_normal(t, rng, 0.0, std); }

ModelConfig moe_config(int d, int n_experts, int top_k, int d_ff, int shared, config::ScoreFunc func,
                       bool normalize, float routed_scale, float aux = 0.0f, float z = 0.0f) {
  ModelConfig cfg;
  cfg.set_vocab_size(32);
  cfg.set_d_model(d);
  cfg.set_n_layers(2);
  cfg.set_n_heads(1);
  cfg.set_n_dense_layers(0);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(n_experts);
  moe->set_top_k(top_k);
  moe->set_expert_d_ff(d_ff);
  moe->set_n_shared_experts(shared);
  moe->set_score_func(func);
  moe->set_normalize_topk(normalize);
  moe->set_routed_scale(routed_scale);
  moe->set_aux_loss_coeff(aux);
  moe->set_z_loss_coeff(z);
  return cfg;
}

// Row r of a row-major [*, cols] float tensor as doubles.
std::vector<double> row(const Tensor& t, int64_t r, int64_t cols) {
  const float* p = t.data<float>() + r * cols;
  return {p, p + cols};
}

double silu(double v) { return v / (1.0 + std::exp(-v)); }

// SwiGLU MLP on one token: w1, w3 [F, D] and w2 [D, F] at the given float pointers.
std::vector<double> naive_mlp(const std::vector<double>& x, const float* w1, const float* w3, const float* w2,
                              int64_t d, int64_t f) {
  std::vector<double> act(f), y(d, 0.0);
  for (int64_t i = 0; i < f; ++i) {
    double g = 0.0, u = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      g += w1[i * d + c] * x[c];
      u += w3[i * d + c] * x[c];
    }
    act[i] = silu(g) * u;
  }
  for (int64_t c = 0; c < d; ++c)
    for (int64_t i = 0; i < f; ++i) y[c] += w2[c * f + i] * act[i];
  return y;
}

struct Routing {
  std::vector<double> logits, scores;  // [N, E]
  std::vector<int> selected;           // [N, K], by descending biased score, ties to the lower index
  std::vector<double> weights;         // [N, K]
};

Routing naive_routing(const ModelConfig& cfg, const Tensor& x, const Tensor& router, const Tensor& bias) {
  const auto& moe = cfg.moe();
  const int64_t n = x.rows(), d = x.cols(), e = moe.n_routed_experts(), k = moe.top_k();
  Routing r;
  r.logits.assign(n * e, 0.0);
  r.scores.resize(n * e);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t j = 0; j < e; ++j)
      for (int64_t c = 0; c < d; ++c)
        r.logits[t * e + j] += static_cast<double>(x.data<float>()[t * d + c]) * router.data<float>()[j * d + c];
    double z = 0.0;
    for (int64_t j = 0; j < e; ++j) z += std::exp(r.logits[t * e + j]);
    for (int64_t j = 0; j < e; ++j)
      r.scores[t * e + j] = moe.score_func() == config::SIGMOID ? 1.0 / (1.0 + std::exp(-r.logits[t * e + j]))
                                                                : std::exp(r.logits[t * e + j]) / z;
    std::vector<int> order(e);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return r.scores[t * e + a] + bias.data<float>()[a] > r.scores[t * e + b] + bias.data<float>()[b];
    });
    double sum = 0.0;
    for (int64_t s = 0; s < k; ++s) sum += r.scores[t * e + order[s]];
    for (int64_t s = 0; s < k; ++s) {
      r.selected.push_back(order[s]);
      const double sc = r.scores[t * e + order[s]];
      r.weights.push_back((moe.normalize_topk() ? sc / sum : sc) * moe.routed_scale());
    }
  }
  return r;
}

void expect_near_rel(const Tensor& actual, const std::vector<double>& expected, double tol) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i)
    ASSERT_NEAR(actual.data<float>()[i], expected[i], tol * (1.0 + std::abs(expected[i]))) << "at " << i;
}

struct MoeFixture {
  explicit MoeFixture(const ModelConfig& c) : cfg(c), moe(cfg, 1, params) {}
  Tensor& value(const std::string& leaf) { return params.get("layers.1.moe." + leaf).value; }
  ModelConfig cfg;
  ParameterRegistry params;
  MoELayer moe;
};

// Random weights everywhere (bias included), one forward, compared with the naive layer.
void check_against_naive(const ModelConfig& cfg, unsigned seed) {
  const auto& mc = cfg.moe();
  const int64_t n = 17, d = cfg.d_model(), e = mc.n_routed_experts(), k = mc.top_k(), f = mc.expert_d_ff();
  std::mt19937 rng(seed);
  MoeFixture fx(cfg);
  for (Parameter* p : fx.params.all()) fill_normal(p->value, rng, 0.5);
  fill_normal(fx.moe.balancing_bias().value, rng, 0.1);
  const Tensor x = random_normal({n, d}, rng);
  const LossWeights weights{0.25f, 0.5f};
  const Tensor y = fx.moe.forward(x, weights);
  ASSERT_EQ(y.shape(), x.shape());

  const Routing r = naive_routing(cfg, x, fx.value("router.weight"), fx.moe.balancing_bias().value);
  std::vector<double> expected(n * d, 0.0);
  std::vector<int64_t> load(e, 0);
  const int64_t per_expert = f * d;
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<double> xt = row(x, t, d);
    for (int64_t s = 0; s < k; ++s) {
      const int j = r.selected[t * k + s];
      ++load[j];
      const std::vector<double> out =
          naive_mlp(xt, fx.value("experts.w1").data<float>() + j * per_expert,
                    fx.value("experts.w3").data<float>() + j * per_expert,
                    fx.value("experts.w2").data<float>() + j * per_expert, d, f);
      for (int64_t c = 0; c < d; ++c) expected[t * d + c] += r.weights[t * k + s] * out[c];
    }
    if (mc.n_shared_experts() > 0) {
      const std::vector<double> out =
          naive_mlp(xt, fx.value("shared.w1.weight").data<float>(), fx.value("shared.w3.weight").data<float>(),
                    fx.value("shared.w2.weight").data<float>(), d, f * mc.n_shared_experts());
      for (int64_t c = 0; c < d; ++c) expected[t * d + c] += out[c];
    }
  }
  expect_near_rel(y, expected, 1e-5);
  EXPECT_EQ(fx.moe.last_load(), load);
  // Given the residual stream, the output is that plus the same sum.
  const Tensor residual = random_normal({n, d}, rng);
  std::vector<double> onto = expected;
  for (int64_t i = 0; i < n * d; ++i) onto[i] += residual.data<float>()[i];
  expect_near_rel(fx.moe.forward(x, weights, residual), onto, 1e-5);
  EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t{0}), n * k);

  // Aux: α·E·Σ f_i P_i (f = load share, P = mean normalized score), per micro-batch weight.
  double aux = 0.0;
  for (int64_t j = 0; j < e; ++j) {
    double p = 0.0;
    for (int64_t t = 0; t < n; ++t) {
      double sum = 0.0;
      for (int64_t i = 0; i < e; ++i) sum += r.scores[t * e + i];
      p += r.scores[t * e + j] / sum / n;
    }
    aux += static_cast<double>(load[j]) / (n * k) * p;
  }
  aux *= mc.aux_loss_coeff() * e * weights.per_micro_batch;
  // z: β·Σ_t logsumexp(r_t)², per token weight.
  double z = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    double s = 0.0;
    for (int64_t j = 0; j < e; ++j) s += std::exp(r.logits[t * e + j]);
    z += std::log(s) * std::log(s);
  }
  z *= mc.z_loss_coeff() * weights.per_token;
  EXPECT_NEAR(fx.moe.last_aux_loss(), aux, 1e-5 * (1.0 + aux));
  EXPECT_NEAR(fx.moe.last_z_loss(), z, 1e-5 * (1.0 + z));
}

TEST(MoE, MatchesNaiveSigmoidNormalizedWithShared) {
  check_against_naive(moe_config(7, 5, 2, 3, 2, config::SIGMOID, true, 1.0f, 0.3f, 0.2f), 1);
}
TEST(MoE, MatchesNaiveSigmoidUnnormalizedScaled) {
  check_against_naive(moe_config(9, 7, 3, 5, 0, config::SIGMOID, false, 2.5f, 0.0f, 0.1f), 2);
}
TEST(MoE, MatchesNaiveSoftmaxNormalized) {
  check_against_naive(moe_config(5, 6, 1, 4, 1, config::SOFTMAX, true, 1.0f, 0.5f, 0.0f), 3);
}
TEST(MoE, MatchesNaiveSoftmaxUnnormalizedAllExperts) {
  check_against_naive(moe_config(3, 3, 3, 1, 1, config::SOFTMAX, false, 0.7f), 4);
}

TEST(MoE, InitScalesOutputProjectionsWithDepth) {
  ModelConfig cfg = moe_config(64, 4, 2, 64, 1, config::SIGMOID, true, 1.0f);
  cfg.set_n_layers(8);
  cfg.set_init_std(0.05f);
  MoeFixture fx(cfg);
  fx.params.initialize(11);
  auto std_of = [&](const std::string& leaf) {
    const Tensor& t = fx.value(leaf);
    return std::sqrt(std::inner_product(t.data<float>(), t.data<float>() + t.numel(), t.data<float>(), 0.0) /
                     t.numel());
  };
  const double out_std = 0.05 / std::sqrt(2.0 * 8);
  for (const char* leaf : {"router.weight", "experts.w1", "experts.w3", "shared.w1.weight", "shared.w3.weight"})
    EXPECT_NEAR(std_of(leaf), 0.05, 0.05 * 0.1) << leaf;
  for (const char* leaf : {"experts.w2", "shared.w2.weight"}) EXPECT_NEAR(std_of(leaf), out_std, out_std * 0.1) << leaf;
  EXPECT_EQ(std_of("router.bias"), 0.0);
  EXPECT_EQ(fx.params.get("layers.1.moe.router.bias").group, OptimGroup::NotTrained);
}

// With every expert identical, Σ_k w_k·Expert(x) = Expert(x)·Σ_k w_k whatever the routing.
void check_identical_experts(bool normalize) {
  const int64_t n = 11, d = 6, e = 5, k = 3, f = 4;
  const float scale = 1.6f;
  const ModelConfig cfg = moe_config(d, e, k, f, 0, config::SIGMOID, normalize, scale);
  std::mt19937 rng(normalize ? 5 : 6);
  MoeFixture fx(cfg);
  fill_normal(fx.value("router.weight"), rng, 1.0);
  fill_normal(fx.moe.balancing_bias().value, rng, 0.2);
  for (const char* leaf : {"experts.w1", "experts.w3", "experts.w2"}) {
    Tensor& w = fx.value(leaf);
    Tensor first = w.slice(0, 1);
    fill_normal(first, rng, 0.5);
    for (int64_t j = 1; j < e; ++j) w.slice(j, j + 1).copy_from(first);
  }
  const Tensor x = random_normal({n, d}, rng);
  const Tensor y = fx.moe.forward(x, {});
  const Routing r = naive_routing(cfg, x, fx.value("router.weight"), fx.moe.balancing_bias().value);
  std::vector<double> expected;
  for (int64_t t = 0; t < n; ++t) {
    double sum_w = 0.0;
    for (int64_t s = 0; s < k; ++s) sum_w += r.weights[t * k + s];
    if (normalize) {
      EXPECT_NEAR(sum_w, scale, 1e-12);
    }
    const std::vector<double> out = naive_mlp(row(x, t, d), fx.value("experts.w1").data<float>(),
                                              fx.value("experts.w3").data<float>(),
                                              fx.value("experts.w2").data<float>(), d, f);
    for (int64_t c = 0; c < d; ++c) expected.push_back(out[c] * sum_w);
  }
  expect_near_rel(y, expected, 1e-5);
}

TEST(MoE, IdenticalExpertsNormalizedGiveScaledExpert) { check_identical_experts(true); }
TEST(MoE, IdenticalExpertsUnnormalizedGiveScoreSumTimesExpert) { check_identical_experts(false); }

// Equal router rows and a zero bias give every expert the same score: the lowest k indices win,
// so the other experts receive no tokens, and backward still works.
void check_ties(config::ScoreFunc func) {
  const int64_t n = 9, d = 5, e = 6, k = 2;
  const ModelConfig cfg = moe_config(d, e, k, 3, 1, func, true, 1.0f, 0.1f, 0.1f);
  std::mt19937 rng(7);
  MoeFixture fx(cfg);
  for (Parameter* p : fx.params.all()) fill_normal(p->value, rng, 0.5);
  fx.moe.balancing_bias().value.zero_();
  Tensor& router = fx.value("router.weight");
  for (int64_t j = 1; j < e; ++j) router.slice(j, j + 1).copy_from(router.slice(0, 1));
  const Tensor x = random_normal({n, d}, rng);
  fx.moe.forward(x, {});
  EXPECT_EQ(fx.moe.last_load(), (std::vector<int64_t>{n, n, 0, 0, 0, 0}));

  const Tensor dx = fx.moe.backward(random_normal({n, d}, rng));
  for (float v : dx.to_vector<float>()) ASSERT_TRUE(std::isfinite(v));
  const Tensor& dw1 = fx.params.get("layers.1.moe.experts.w1").grad;
  const int64_t per_expert = dw1.numel() / e;
  double used = 0.0, unused = 0.0;
  for (int64_t i = 0; i < dw1.numel(); ++i) (i < k * per_expert ? used : unused) += std::abs(dw1.data<float>()[i]);
  EXPECT_GT(used, 0.0);
  EXPECT_EQ(unused, 0.0);
}

TEST(MoE, TiesGoToLowerIndexSigmoid) { check_ties(config::SIGMOID); }
TEST(MoE, TiesGoToLowerIndexSoftmax) { check_ties(config::SOFTMAX); }

// A router whose first input feature (constant 1) favours low expert indices: most tokens go to
// experts 0 and 1. b_i += γ·sign(mean − load_i) after each step pulls the loads toward the mean.
TEST(MoE, BalancingBiasUpdateEvensOutSkewedLoad) {
  const int64_t n = 64, d = 8, e = 6, k = 2;
  const ModelConfig cfg = moe_config(d, e, k, 3, 0, config::SIGMOID, true, 1.0f);
  std::mt19937 rng(8);
  MoeFixture fx(cfg);
  for (Parameter* p : fx.params.all()) fill_normal(p->value, rng, 0.3);
  fx.moe.balancing_bias().value.zero_();
  Tensor& router = fx.value("router.weight");
  for (int64_t j = 0; j < e; ++j) router.data<float>()[j * d] = 3.0f * static_cast<float>(e - 1 - j) / (e - 1);
  Tensor x = random_normal({n, d}, rng);
  for (int64_t t = 0; t < n; ++t) x.data<float>()[t * d] = 1.0f;

  auto imbalance = [&] {
    const auto& load = fx.moe.last_load();
    return static_cast<double>(*std::max_element(load.begin(), load.end())) / (static_cast<double>(n * k) / e);
  };
  fx.moe.forward(x, {});
  const double before = imbalance();
  const std::vector<int64_t> load_before = fx.moe.last_load();
  ASSERT_GT(load_before[0] + load_before[1], n * k * 3 / 4) << "the router is not skewed";
  for (int round = 0; round < 100; ++round) {
    update_balancing_bias(fx.moe.balancing_bias().value, fx.moe.last_load(), 0.01f);
    fx.moe.forward(x, {});
  }
  const double after = imbalance();
  EXPECT_GT(before, 2.0);
  EXPECT_LT(after, 1.5) << "load never evened out";
  // Underloaded experts were pushed up, the favoured ones down.
  EXPECT_LT(fx.moe.balancing_bias().value.data<float>()[0], 0.0f);
  EXPECT_GT(fx.moe.balancing_bias().value.data<float>()[e - 1], 0.0f);
}

}  // namespace
}  // namespace engram
