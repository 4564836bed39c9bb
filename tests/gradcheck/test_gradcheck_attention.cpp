// The Attention module (MODEL.md §2): its forward against a naive double-precision reference
// (projections, rotate-half RoPE at positions 0..T−1, causal softmax, output projection), also when
// the sequence length changes between calls and onto a residual; and its backward against central differences for dx
// and all four weight matrices, whose gradients must be accumulated onto what the buffers hold.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "model/attention.h"
#include "tests/gradcheck/finite_difference.h"

namespace engram {
namespace {

using test::check_gradient;
using test::Eval;

ModelConfig attention_config(int d_model, int n_heads) {
  ModelConfig cfg;
  cfg.set_vocab_size(32);
  cfg.set_d_model(d_model);
  cfg.set_n_layers(3);
  cfg.set_n_heads(n_heads);
  cfg.set_d_ff(8);
  cfg.set_n_dense_layers(3);
  cfg.set_rope_theta(50.0f);  // a small base: the rotation angles differ clearly between positions
  return cfg;
}

// y = x·Wᵀ for x [N, D_in] (row-major), W [D_out, D_in], in double.
std::vector<double> project(const std::vector<double>& x, const Tensor& w, int64_t n) {
  const int64_t d_out = w.dim(0), d_in = w.dim(1);
  const float* pw = w.data<float>();
  std::vector<double> y(n * d_out, 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < d_out; ++o)
      for (int64_t i = 0; i < d_in; ++i) y[r * d_out + o] += x[r * d_in + i] * pw[o * d_in + i];
  return y;
}

// Naive attention straight from MODEL.md §2, x [B, T, D] -> [B, T, D] in double.
std::vector<double> reference_attention(const Tensor& x, const ParameterRegistry& params, int layer,
                                        const ModelConfig& cfg) {
  const int64_t batch = x.dim(0), seq = x.dim(1), d = x.dim(2), heads = cfg.n_heads(), dh = d / heads;
  const std::string prefix = "layers." + std::to_string(layer) + ".attn.";
  const std::vector<float> xf = x.to_vector<float>();
  const std::vector<double> xd(xf.begin(), xf.end());
  const int64_t n = batch * seq;
  std::vector<double> q = project(xd, params.get(prefix + "wq.weight").value, n);
  std::vector<double> k = project(xd, params.get(prefix + "wk.weight").value, n);
  const std::vector<double> v = project(xd, params.get(prefix + "wv.weight").value, n);
  for (std::vector<double>* a : {&q, &k}) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < seq; ++t)
        for (int64_t h = 0; h < heads; ++h) {
          double* row = a->data() + (b * seq + t) * d + h * dh;
          for (int64_t i = 0; i < dh / 2; ++i) {
            const double angle = t * std::pow(static_cast<double>(cfg.rope_theta()), -2.0 * i / dh);
            const double lo = row[i], hi = row[i + dh / 2];
            row[i] = lo * std::cos(angle) - hi * std::sin(angle);
            row[i + dh / 2] = lo * std::sin(angle) + hi * std::cos(angle);
          }
        }
  }
  std::vector<double> o(n * d, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t t = 0; t < seq; ++t) {
        std::vector<double> score(t + 1);
        double max = -1e300;
        for (int64_t s = 0; s <= t; ++s) {
          double dotp = 0.0;
          for (int64_t i = 0; i < dh; ++i)
            dotp += q[(b * seq + t) * d + h * dh + i] * k[(b * seq + s) * d + h * dh + i];
          score[s] = dotp / std::sqrt(static_cast<double>(dh));
          max = std::max(max, score[s]);
        }
        double z = 0.0;
        for (double& sc : score) z += (sc = std::exp(sc - max));
        for (int64_t s = 0; s <= t; ++s)
          for (int64_t i = 0; i < dh; ++i)
            o[(b * seq + t) * d + h * dh + i] += score[s] / z * v[(b * seq + s) * d + h * dh + i];
      }
  return project(o, params.get(prefix + "wo.weight").value, n);
}

TEST(GradcheckAttention, RegistersProjectionsWithScaledOutputInit) {
  const ModelConfig cfg = attention_config(12, 3);
  ParameterRegistry params;
  Attention attn(cfg, 2, params);
  ASSERT_EQ(params.all().size(), 4u);
  for (const char* w : {"wq", "wk", "wv", "wo"}) {
    const Parameter& p = params.get(std::string("layers.2.attn.") + w + ".weight");
    EXPECT_EQ(p.global_shape, (Shape{12, 12})) << w;
    EXPECT_EQ(p.group, OptimGroup::Decay) << w;
    EXPECT_EQ(p.init.kind, InitKind::Normal) << w;
    const double expected_std = std::string(w) == "wo" ? cfg.init_std() / std::sqrt(2.0 * 3) : cfg.init_std();
    EXPECT_NEAR(p.init.std, expected_std, 1e-9) << w;
  }
}

TEST(GradcheckAttention, ForwardMatchesNaiveReferenceForChangingSequenceLengths) {
  const ModelConfig cfg = attention_config(12, 3);
  std::mt19937 rng(7);
  ParameterRegistry params;
  Attention attn(cfg, 1, params);
  for (Parameter* p : params.all()) test::fill_normal(p->value, rng, 0.0, 0.4);
  // Growing, shrinking and growing again: the RoPE tables must cover every length.
  for (int64_t seq : {7, 3, 13, 1, 9}) {
    const Tensor x = test::random_normal({2, seq, 12}, rng);
    const Tensor y = attn.forward(x);
    ASSERT_EQ(y.shape(), x.shape());
    const std::vector<double> ref = reference_attention(x, params, 1, cfg);
    const float* py = y.data<float>();
    for (int64_t i = 0; i < y.numel(); ++i)
      ASSERT_NEAR(py[i], ref[i], 1e-4 + 1e-4 * std::abs(ref[i])) << "T = " << seq << ", element " << i;
    // Given the residual stream, the output product adds it.
    const Tensor residual = test::random_normal(x.shape(), rng);
    const Tensor y_onto = attn.forward(x, residual);
    const float* pr = residual.data<float>();
    for (int64_t i = 0; i < y_onto.numel(); ++i)
      ASSERT_NEAR(y_onto.data<float>()[i], ref[i] + pr[i], 1e-4 + 1e-4 * std::abs(ref[i] + pr[i]))
          << "T = " << seq << ", element " << i << " with a residual";
  }
}

void check_attention_backward(int64_t batch, int64_t seq, int d_model, int n_heads, unsigned seed) {
  const ModelConfig cfg = attention_config(d_model, n_heads);
  std::mt19937 rng(seed);
  ParameterRegistry params;
  Attention attn(cfg, 0, params);
  // Scores of order one: a softmax that is neither uniform nor so peaked that float32 rounding
  // swamps the difference quotient.
  for (Parameter* p : params.all()) {
    test::fill_normal(p->value, rng, 0.0, 0.3);
    test::fill_normal(p->grad, rng);  // backward must add to this
  }
  const test::GradientSnapshot grad_before(params);

  Tensor x = test::random_normal({batch, seq, d_model}, rng);
  const Tensor dy = test::random_normal({batch, seq, d_model}, rng);
  attn.forward(x);
  const Tensor dx = attn.backward(dy);
  ASSERT_EQ(dx.shape(), x.shape());

  auto evaluate = [&] { return Eval{test::dot(dy, attn.forward(x))}; };
  test::FdOptions opt;
  opt.samples = 40;
  const auto rx = check_gradient("dx", x, dx.to_vector<float>(), evaluate, rng, opt);
  EXPECT_EQ(rx.checked, std::min<int64_t>(opt.samples, x.numel()));
  EXPECT_GT(rx.max_abs_grad, 0.0);
  for (Parameter* p : params.all()) {
    const std::vector<float> added = grad_before.added(*p);
    const auto r = check_gradient(p->name, p->value, added, evaluate, rng, opt);
    EXPECT_EQ(r.checked, std::min<int64_t>(opt.samples, p->value.numel())) << p->name;
    // With a single position the softmax is identically 1, so queries and keys get no gradient.
    const bool constant_softmax =
        seq == 1 && (p->name.find(".wq.") != std::string::npos || p->name.find(".wk.") != std::string::npos);
    if (constant_softmax) {
      for (float g : added) ASSERT_EQ(g, 0.0f) << p->name;
    } else {
      EXPECT_GT(r.max_abs_grad, 0.0) << p->name;
    }
  }
}

TEST(GradcheckAttention, BackwardThreeHeads) { check_attention_backward(2, 7, 12, 3, 1); }
TEST(GradcheckAttention, BackwardOneTokenOneHead) { check_attention_backward(3, 1, 6, 1, 2); }
TEST(GradcheckAttention, BackwardLongerSequence) { check_attention_backward(1, 13, 8, 2, 3); }

}  // namespace
}  // namespace engram
