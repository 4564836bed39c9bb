// Engram: the hashing constants of a 2-layer config (against MODEL.md's example and a naive
// SplitMix64 / prime walk), the module forward against a naive double-precision reference (hash,
// lookup, projections, gate, conv-norm with its own eps, conv), the W_c = 0 and zero-table special
// cases, a lookup started ahead of its forward, parameter registration, the row gradients of a
// batch with repeated n-grams, and the residual gradient added by backward.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/ngram_hash.h"
#include "model/engram.h"
#include "tests/test_util.h"

namespace engram {
namespace {

ModelConfig engram_config(const std::string& engram_fields, int d_model = 7) {
  return parse_config_text("model { vocab_size: 50 d_model: " + std::to_string(d_model) +
                               " n_layers: 16 n_heads: 1 d_ff: 4 n_dense_layers: 16 engram { " + engram_fields +
                               " } }",
                           "test")
      .model();
}

// ---- naive hashing constants (MODEL.md §4.2) ----

std::vector<uint64_t> naive_multipliers(uint64_t seed, int layer, int64_t vocab_c, int max_ngram) {
  const uint64_t half_bound = std::max<uint64_t>(1, (0x7FFFFFFFFFFFFFFFULL / vocab_c) / 2);
  uint64_t state = seed + 10007ULL * layer;
  std::vector<uint64_t> m;
  for (int k = 0; k < max_ngram; ++k) {
    state += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    m.push_back(2 * (z % half_bound) + 1);
  }
  return m;
}

using testing_util::naive_is_prime;

TEST(EngramHashing, TwoLayerConstants) {
  const ModelConfig cfg =
      engram_config("layers: [1, 15] max_ngram: 3 heads_per_ngram: 8 head_dim: 4 table_size: [646400, 646400] seed: 5");
  const int64_t vocab_c = 1234;
  const std::vector<EngramLayerHash> plans = make_engram_hashing(cfg, vocab_c);
  ASSERT_EQ(plans.size(), 2u);
  EXPECT_EQ(plans[0].layer, 1);
  EXPECT_EQ(plans[1].layer, 15);

  // MODEL.md §4.2 example: layer 1, n = 2 and the first prime of n = 3.
  const std::vector<int64_t> first(plans[0].primes.begin(), plans[0].primes.begin() + 9);
  EXPECT_EQ(first, (std::vector<int64_t>{646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523, 646537}));

  // The whole walk: layers, then n, then j; smallest unused prime above the start.
  std::set<int64_t> used;
  for (const EngramLayerHash& plan : plans) {
    ASSERT_EQ(plan.primes.size(), 16u);
    int64_t prev = 0, sum = 0;
    for (size_t i = 0; i < plan.primes.size(); ++i) {
      int64_t p = (i % 8 == 0 ? 646400 - 1 : prev) + 1;
      while (!naive_is_prime(p) || used.count(p)) ++p;
      EXPECT_EQ(plan.primes[i], p) << "layer " << plan.layer << " head " << i;
      used.insert(p);
      prev = p;
      EXPECT_EQ(plan.offsets[i], sum);
      sum += plan.primes[i];
    }
    EXPECT_EQ(plan.rows, sum);
    EXPECT_EQ(plan.multipliers, naive_multipliers(5, plan.layer, vocab_c, 3));
    EXPECT_EQ(plan.multipliers, kernels::engram_multipliers(5, plan.layer, vocab_c, 3));
    for (uint64_t m : plan.multipliers) EXPECT_LT(m, 0x7FFFFFFFFFFFFFFFULL / vocab_c + 1);  // no overflow
  }
  EXPECT_EQ(used.size(), 32u);  // unique across the model
}

// ---- naive module forward (MODEL.md §4.3), in double ----

struct Reference {
  std::vector<double> alpha;  // [N]
  std::vector<double> u;      // [N, D] = α·v
  std::vector<double> y;      // [N, D]
  std::set<int64_t> rows;     // every table row looked up
  int64_t lookups = 0;
};

std::vector<double> values(const ParameterRegistry& params, const std::string& name) {
  const std::vector<float> v = params.get(name).value.to_vector<float>();
  return {v.begin(), v.end()};
}

std::vector<double> rmsnorm(const double* x, const std::vector<double>& g, double eps) {
  const size_t d = g.size();
  double ms = 0.0;
  for (size_t c = 0; c < d; ++c) ms += x[c] * x[c];
  const double rstd = 1.0 / std::sqrt(ms / d + eps);
  std::vector<double> y(d);
  for (size_t c = 0; c < d; ++c) y[c] = x[c] * rstd * g[c];
  return y;
}

Reference naive_engram(const ModelConfig& cfg, const EngramLayerHash& plan, int64_t pad_c,
                       const ParameterRegistry& params, const Tensor& h, const Tensor& ids) {
  const auto& g = cfg.engram();
  const std::string pre = "layers." + std::to_string(plan.layer) + ".engram.";
  const int64_t batch = h.dim(0), seq = h.dim(1), d = cfg.d_model(), heads = g.heads_per_ngram();
  const int64_t de = g.head_dim(), dm = (g.max_ngram() - 1) * heads * de, w = g.conv_kernel();
  const std::vector<double> table = values(params, pre + "table"), wk = values(params, pre + "wk.weight"),
                            wv = values(params, pre + "wv.weight"), bk = values(params, pre + "wk.bias"),
                            bv = values(params, pre + "wv.bias"), gq = values(params, pre + "q_norm.weight"),
                            gk = values(params, pre + "k_norm.weight"), gc = values(params, pre + "conv_norm.weight"),
                            wc = values(params, pre + "conv.weight");
  const int32_t* x = ids.data<int32_t>();
  const float* hp = h.data<float>();
  Reference ref;
  std::vector<double> r(batch * seq * d);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) {
      const int64_t tok = b * seq + t;
      std::vector<double> e;
      for (int n = 2; n <= g.max_ngram(); ++n) {
        uint64_t mix = 0;
        for (int k = 0; k < n; ++k) {
          const uint64_t id = t - k >= 0 ? static_cast<uint64_t>(x[tok - k]) : static_cast<uint64_t>(pad_c);
          mix ^= id * plan.multipliers[k];
        }
        for (int64_t j = 0; j < heads; ++j) {
          const size_t head = (n - 2) * heads + j;
          const int64_t row = plan.offsets[head] + static_cast<int64_t>(mix % static_cast<uint64_t>(plan.primes[head]));
          ref.rows.insert(row);
          ++ref.lookups;
          for (int64_t c = 0; c < de; ++c) e.push_back(table[row * de + c]);
        }
      }
      std::vector<double> k(d), v(d), hd(hp + tok * d, hp + tok * d + d);
      for (int64_t o = 0; o < d; ++o) {
        k[o] = bk[o];
        v[o] = bv[o];
        for (int64_t c = 0; c < dm; ++c) {
          k[o] += wk[o * dm + c] * e[c];
          v[o] += wv[o * dm + c] * e[c];
        }
      }
      const std::vector<double> qn = rmsnorm(hd.data(), gq, cfg.norm_eps()), kn = rmsnorm(k.data(), gk, cfg.norm_eps());
      double s = 0.0;
      for (int64_t c = 0; c < d; ++c) s += qn[c] * kn[c];
      s /= std::sqrt(static_cast<double>(d));
      const double root = std::sqrt(std::max(std::abs(s), 1e-6));
      const double a = 1.0 / (1.0 + std::exp(-(s > 0 ? root : s < 0 ? -root : 0.0)));
      ref.alpha.push_back(a);
      for (int64_t c = 0; c < d; ++c) ref.u.push_back(a * v[c]);
      const std::vector<double> rt = rmsnorm(&ref.u[tok * d], gc, 1e-5);
      std::copy(rt.begin(), rt.end(), r.begin() + tok * d);
    }
  }
  ref.y = ref.u;
  const int64_t dilation = g.max_ngram();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t)
      for (int64_t c = 0; c < d; ++c) {
        double conv = 0.0;
        for (int64_t i = 0; i < w; ++i) {
          const int64_t src = t - (w - 1 - i) * dilation;
          if (src >= 0) conv += wc[i * d + c] * r[(b * seq + src) * d + c];
        }
        ref.y[(b * seq + t) * d + c] += conv / (1.0 + std::exp(-conv));
      }
  return ref;
}

void expect_near_rel(const Tensor& actual, const std::vector<double>& expected, double tol) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size()));
  for (size_t i = 0; i < expected.size(); ++i)
    ASSERT_NEAR(actual.data<float>()[i], expected[i], tol * (1.0 + std::abs(expected[i]))) << "at " << i;
}

void fill(Tensor& t, std::mt19937& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(dist(rng));
}

struct EngramFixture {
  EngramFixture(const std::string& fields, int64_t vocab_c, int plan_index, int d_model = 7)
      : cfg(engram_config(fields, d_model)),
        plans(make_engram_hashing(cfg, vocab_c)),
        layer(plans[plan_index].layer),
        module(cfg, plans[plan_index], pad_c, params) {}
  Tensor& value(const std::string& leaf) {
    return params.get("layers." + std::to_string(layer) + ".engram." + leaf).value;
  }
  static constexpr int64_t pad_c = 4;
  ModelConfig cfg;
  std::vector<EngramLayerHash> plans;
  int layer;
  ParameterRegistry params;
  EngramModule module;
};

Tensor random_ids(int64_t batch, int64_t seq, int32_t vocab, std::mt19937& rng) {
  Tensor ids = Tensor::empty({batch, seq}, DType::I32);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  for (int64_t i = 0; i < ids.numel(); ++i) ids.data<int32_t>()[i] = dist(rng);
  return ids;
}

const char* kSmall = "layers: [3, 9] max_ngram: 3 heads_per_ngram: 2 head_dim: 3 table_size: [11, 13] conv_kernel: 3";

// Every parameter random; `v_scale` shrinks the value path so that the conv norm's eps (1e-5, not
// norm_eps) visibly matters.
void check_against_naive(double v_scale, unsigned seed) {
  EngramFixture fx(kSmall, 17, 1);
  std::mt19937 rng(seed);
  for (Parameter* p : fx.params.all()) fill(p->value, rng, -1.0, 1.0);
  for (const char* gain : {"q_norm.weight", "k_norm.weight", "conv_norm.weight"}) fill(fx.value(gain), rng, 0.5, 1.5);
  for (const char* leaf : {"wv.weight", "wv.bias"}) {
    Tensor& t = fx.value(leaf);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] *= static_cast<float>(v_scale);
  }
  const Tensor ids = random_ids(3, 10, 17, rng);
  Tensor h = Tensor::empty({3, 10, 7});
  fill(h, rng, -2.0, 2.0);
  const Tensor y = fx.module.forward(h, ids);
  ASSERT_EQ(y.shape(), h.shape());
  const Reference ref = naive_engram(fx.cfg, fx.plans[1], EngramFixture::pad_c, fx.params, h, ids);
  expect_near_rel(y, ref.y, 2e-5);
  double mean_alpha = 0.0;
  for (double a : ref.alpha) mean_alpha += a / ref.alpha.size();
  EXPECT_NEAR(fx.module.last_gate_mean(), mean_alpha, 1e-6);
}

TEST(EngramModule, ForwardMatchesNaiveReference) { check_against_naive(1.0, 1); }
TEST(EngramModule, ForwardMatchesNaiveReferenceWithTinyValues) { check_against_naive(1e-3, 2); }

// A lookup started ahead (as the model starts every layer's before its first block) gives the same
// forward, bit for bit, and reads the table when it starts: zeroing the table afterwards changes
// nothing. A forward with other ids than the started lookup's is refused.
TEST(EngramModule, StartedLookupGivesTheSameForward) {
  EngramFixture fx(kSmall, 17, 1);
  std::mt19937 rng(8);
  for (Parameter* p : fx.params.all()) fill(p->value, rng, -1.0, 1.0);
  const Tensor ids = random_ids(2, 9, 17, rng);
  Tensor h = Tensor::empty({2, 9, 7});
  fill(h, rng, -1.0, 1.0);
  const Tensor alone = fx.module.forward(h, ids);
  fx.module.start_lookup(ids);
  fx.value("table").zero_();
  const Tensor started = fx.module.forward(h, ids);
  EXPECT_TRUE(testing_util::bitwise_equal(started, alone));
  EXPECT_FALSE(testing_util::bitwise_equal(fx.module.forward(h, ids), alone));  // the zeroed table now
  fx.module.start_lookup(ids.clone());
  EXPECT_THROW(fx.module.forward(h, ids), Error);
}

TEST(EngramModule, ZeroConvGivesGatedValue) {
  EngramFixture fx(kSmall, 17, 1);
  std::mt19937 rng(3);
  for (Parameter* p : fx.params.all()) fill(p->value, rng, -1.0, 1.0);
  fx.value("conv.weight").zero_();
  const Tensor ids = random_ids(2, 9, 17, rng);
  Tensor h = Tensor::empty({2, 9, 7});
  fill(h, rng, -1.0, 1.0);
  const Tensor y = fx.module.forward(h, ids);
  const Reference ref = naive_engram(fx.cfg, fx.plans[1], EngramFixture::pad_c, fx.params, h, ids);
  expect_near_rel(y, ref.u, 2e-5);  // α·v
}

// At init W_c = 0, gains 1 and biases 0; with the table zeroed too, k = b_K and v = b_V, so every
// token's output is α_t·b_V.
TEST(EngramModule, ZeroTableAtInitGivesGatedValueBias) {
  EngramFixture fx(kSmall, 17, 1);
  fx.params.initialize(7);
  std::mt19937 rng(4);
  fx.value("table").zero_();
  fill(fx.value("wk.bias"), rng, -1.0, 1.0);
  fill(fx.value("wv.bias"), rng, -1.0, 1.0);
  const Tensor ids = random_ids(2, 5, 17, rng);
  Tensor h = Tensor::empty({2, 5, 7});
  fill(h, rng, -1.0, 1.0);
  const Tensor y = fx.module.forward(h, ids);

  const std::vector<double> bk = values(fx.params, "layers.9.engram.wk.bias");
  const std::vector<float> bv = fx.value("wv.bias").to_vector<float>();
  const std::vector<double> ones(7, 1.0);
  const std::vector<double> kn = rmsnorm(bk.data(), ones, fx.cfg.norm_eps());
  std::vector<double> expected;
  for (int64_t tok = 0; tok < 10; ++tok) {
    const std::vector<double> hd(h.data<float>() + tok * 7, h.data<float>() + tok * 7 + 7);
    const std::vector<double> qn = rmsnorm(hd.data(), ones, fx.cfg.norm_eps());
    double s = 0.0;
    for (int c = 0; c < 7; ++c) s += qn[c] * kn[c];
    s /= std::sqrt(7.0);
    const double a = 1.0 / (1.0 + std::exp(-(s >= 0 ? 1.0 : -1.0) * std::sqrt(std::max(std::abs(s), 1e-6))));
    for (int c = 0; c < 7; ++c) expected.push_back(a * bv[c]);
  }
  expect_near_rel(y, expected, 1e-5);
}

TEST(EngramModule, RegistersParametersByModelNames) {
  EngramFixture fx(kSmall, 17, 1);
  const std::string pre = "layers.9.engram.";
  const Parameter& table = fx.params.get(pre + "table");
  EXPECT_EQ(table.global_shape, (Shape{fx.plans[1].rows, 3}));
  EXPECT_EQ(table.group, OptimGroup::SparseTable);
  EXPECT_EQ(table.shard, ShardKind::Rows);
  EXPECT_FALSE(table.grad.defined());
  for (const char* w : {"wk.weight", "wv.weight"}) {
    EXPECT_EQ(fx.params.get(pre + w).global_shape, (Shape{7, 12}));
    EXPECT_EQ(fx.params.get(pre + w).group, OptimGroup::Decay);
  }
  for (const char* v : {"wk.bias", "wv.bias", "q_norm.weight", "k_norm.weight", "conv_norm.weight"}) {
    EXPECT_EQ(fx.params.get(pre + v).global_shape, (Shape{7}));
    EXPECT_EQ(fx.params.get(pre + v).group, OptimGroup::NoDecay);
  }
  EXPECT_EQ(fx.params.get(pre + "conv.weight").global_shape, (Shape{3, 7}));
  EXPECT_EQ(fx.params.get(pre + "conv.weight").group, OptimGroup::NoDecay);
  fx.params.initialize(1);
  for (float v : fx.value("conv.weight").to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

// A batch that repeats the same few n-grams: each touched row appears once in the row gradient,
// and exactly the rows the naive hash reaches are listed.
TEST(EngramModule, RowGradsListEachTouchedRowOnce) {
  EngramFixture fx(kSmall, 17, 1);
  std::mt19937 rng(5);
  for (Parameter* p : fx.params.all()) fill(p->value, rng, -1.0, 1.0);
  const std::vector<int32_t> pattern = {5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6};
  std::vector<int32_t> tokens = pattern;
  tokens.insert(tokens.end(), pattern.begin(), pattern.end());
  const Tensor ids = Tensor::from_vector(tokens, {2, 11});
  Tensor h = Tensor::empty({2, 11, 7});
  fill(h, rng, -1.0, 1.0);
  fx.module.forward(h, ids);
  Tensor dy = Tensor::empty({2, 11, 7});
  fill(dy, rng, -1.0, 1.0);
  fx.module.backward(dy);

  const Parameter& table = fx.params.get("layers.9.engram.table");
  ASSERT_EQ(table.row_grads.size(), 1u);
  const std::vector<int64_t> rows = table.row_grads[0].rows.to_vector<int64_t>();
  for (size_t i = 1; i < rows.size(); ++i) EXPECT_LT(rows[i - 1], rows[i]);
  EXPECT_EQ(table.row_grads[0].values.shape(), (Shape{static_cast<int64_t>(rows.size()), 3}));
  const Reference ref = naive_engram(fx.cfg, fx.plans[1], EngramFixture::pad_c, fx.params, h, ids);
  EXPECT_EQ(std::set<int64_t>(rows.begin(), rows.end()), ref.rows);
  EXPECT_LT(static_cast<int64_t>(rows.size()), ref.lookups / 4);  // heavily repeated
  for (float v : table.row_grads[0].values.to_vector<float>()) ASSERT_TRUE(std::isfinite(v));
}

// The residual gradient given to backward is added to dh as the query norm writes it: the same
// float additions as adding it to the returned dh.
TEST(EngramModule, BackwardAddsTheResidualGradient) {
  EngramFixture fx(kSmall, 17, 1);
  std::mt19937 rng(6);
  for (Parameter* p : fx.params.all()) fill(p->value, rng, -1.0, 1.0);
  const Tensor ids = random_ids(2, 5, 17, rng);
  Tensor h = Tensor::empty({2, 5, 7}), dy = Tensor::empty({2, 5, 7}), residual = Tensor::empty({2, 5, 7});
  fill(h, rng, -1.0, 1.0);
  fill(dy, rng, -1.0, 1.0);
  fill(residual, rng, -1.0, 1.0);
  fx.module.forward(h, ids);
  Tensor dh = fx.module.backward(dy);
  const Tensor dh_with = fx.module.backward(dy, residual);
  kernels::add_(dh, residual);
  EXPECT_TRUE(testing_util::bitwise_equal(dh_with, dh));
  EXPECT_THROW(fx.module.backward(dy, Tensor::zeros({2, 5, 6})), Error);
}

}  // namespace
}  // namespace engram
