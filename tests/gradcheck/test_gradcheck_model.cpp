// The whole model on a tiny config with every feature on (dense and MoE layers with a shared
// expert, two Engram layers, a non-identity compression table):
// - forward wiring: the loss, aux/z terms and expert loads equal a composition of the modules
//   written out in the test from MODEL.md §2 (residual stream, compressed ids, pad id, LM head, CE);
// - forward() (evaluation) and forward_backward() report the same statistics;
// - backward: a random subset of elements of EVERY parameter (tables through their row grads) is
//   checked against central differences of the objective CE mean + aux + z, with tied and untied
//   embeddings and with aux and z-loss off and on. Perturbations that change an expert selection
//   (seen as a change of the per-layer expert loads) or straddle a kink are skipped; most elements
//   must be checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/engram.h"
#include "model/mlp.h"
#include "model/model.h"
#include "model/moe.h"
#include "model/rmsnorm.h"
#include "tests/gradcheck/finite_difference.h"

namespace engram {
namespace {

using test::Eval;

constexpr int kVocab = 29, kBatch = 2, kSeq = 7;

ModelConfig tiny_config(bool tie, bool aux_and_z) {
  ModelConfig cfg;
  cfg.set_vocab_size(kVocab);
  cfg.set_d_model(16);
  cfg.set_n_heads(2);
  cfg.set_n_layers(3);
  cfg.set_n_dense_layers(1);
  cfg.set_d_ff(24);
  cfg.set_tie_embeddings(tie);
  cfg.set_seed(5);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(4);
  moe->set_top_k(2);
  moe->set_expert_d_ff(8);
  moe->set_n_shared_experts(1);
  moe->set_aux_loss_coeff(aux_and_z ? 0.1f : 0.0f);
  moe->set_z_loss_coeff(aux_and_z ? 0.05f : 0.0f);
  auto* engram = cfg.mutable_engram();
  engram->add_layers(0);
  engram->add_layers(2);
  engram->set_max_ngram(3);
  engram->set_heads_per_ngram(2);
  engram->set_head_dim(4);
  engram->add_table_size(11);
  engram->add_table_size(13);
  return cfg;
}

// Raw ids [0, 29) onto 20 compressed ids, every one of them used (7 is invertible mod 20).
std::vector<int32_t> compress_table() {
  std::vector<int32_t> c(kVocab);
  for (int i = 0; i < kVocab; ++i) c[i] = (i * 7) % 20;
  return c;
}

Batch random_batch(std::mt19937& rng) {
  return testing_util::random_unrelated_batch<Batch>(kBatch, kSeq, kVocab, rng);
}

// Random, non-trivial values everywhere, so that every path carries gradient: gains away from 1,
// biases and conv weights non-zero, matrices scaled to keep activations of order one, and a
// random balancing bias that shifts the top-k selection.
void randomize_parameters(ParameterRegistry& params, std::mt19937& rng) {
  for (Parameter* p : params.all()) {
    const bool gain = p->name.find("norm.weight") != std::string::npos;
    if (gain) {
      test::fill_uniform(p->value, rng, 0.5, 1.5);
    } else if (p->group == OptimGroup::NotTrained || p->value.ndim() == 1) {
      test::fill_normal(p->value, rng, 0.0, p->group == OptimGroup::NotTrained ? 0.1 : 0.3);
    } else if (p->name.find("conv.weight") != std::string::npos) {
      test::fill_normal(p->value, rng, 0.0, 0.5);
    } else {
      test::fill_normal(p->value, rng, 0.0, 1.0 / std::sqrt(static_cast<double>(p->value.dim(-1))));
    }
  }
}

double objective(const ForwardStats& s) {
  return s.ce_sum / static_cast<double>(s.n_targets) + s.aux_loss + s.z_loss;
}

// Hash of the per-layer expert loads: a switch of any token's top-k set changes them.
uint64_t routing_signature(const ForwardStats& s) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& layer : s.expert_load)
    for (int64_t load : layer) h = (h ^ static_cast<uint64_t>(load)) * 1099511628211ULL;
  return h;
}

LossWeights batch_weights(const Batch& b) { return {1.0f / static_cast<float>(b.targets.numel()), 1.0f}; }

// ---- forward wiring ------------------------------------------------------------------------

// The model of MODEL.md §2 composed from its modules, with parameter values copied by name.
struct ComposedModel {
  ParameterRegistry params;
  std::vector<std::unique_ptr<EngramModule>> engram;  // per layer, null where absent
  std::vector<std::unique_ptr<RMSNormModule>> attn_norm, ffn_norm;
  std::vector<std::unique_ptr<Attention>> attn;
  std::vector<std::unique_ptr<SwiGluMlp>> mlp;
  std::vector<std::unique_ptr<MoELayer>> moe;
  std::unique_ptr<RMSNormModule> final_norm;
};

TEST(GradcheckModel, ForwardEqualsTheModulesComposedPerModelMd) {
  for (bool tie : {false, true}) {
    const ModelConfig cfg = tiny_config(tie, true);
    const std::vector<int32_t> compress = compress_table();
    Model model(cfg, compress);
    std::mt19937 rng(11);
    randomize_parameters(model.params(), rng);
    const Batch batch = random_batch(rng);
    const ForwardStats stats = model.forward(batch);

    ComposedModel ref;
    const int d = cfg.d_model();
    const std::vector<EngramLayerHash> hashing = make_engram_hashing(cfg, 20);
    const int64_t pad_c = compress[cfg.eos_id()];  // pad_id unset: the eos id
    size_t next_hash = 0;
    for (int l = 0; l < cfg.n_layers(); ++l) {
      const std::string prefix = "layers." + std::to_string(l);
      const bool has_engram = l == 0 || l == 2;
      ref.engram.push_back(has_engram
                               ? std::make_unique<EngramModule>(cfg, hashing[next_hash++], pad_c, ref.params)
                               : nullptr);
      ref.attn_norm.push_back(
          std::make_unique<RMSNormModule>(ref.params, prefix + ".attn_norm.weight", d, cfg.norm_eps()));
      ref.attn.push_back(std::make_unique<Attention>(cfg, l, ref.params));
      ref.ffn_norm.push_back(
          std::make_unique<RMSNormModule>(ref.params, prefix + ".ffn_norm.weight", d, cfg.norm_eps()));
      ref.mlp.push_back(
          l == 0 ? std::make_unique<SwiGluMlp>(ref.params, prefix + ".mlp", d, cfg.d_ff(), 0.0, 0.0)
                 : nullptr);
      ref.moe.push_back(l == 0 ? nullptr : std::make_unique<MoELayer>(cfg, l, ref.params));
    }
    ref.final_norm = std::make_unique<RMSNormModule>(ref.params, "norm.weight", d, cfg.norm_eps());
    for (Parameter* p : ref.params.all()) p->value.copy_from(model.params().get(p->name).value);
    const Tensor& embed = model.params().get("tok_embeddings.weight").value;
    const Tensor& head = model.params().get(tie ? "tok_embeddings.weight" : "output.weight").value;

    const int64_t n = batch.inputs.numel();
    const int32_t* x = batch.inputs.data<int32_t>();
    const int32_t* y = batch.targets.data<int32_t>();
    Tensor h = Tensor::empty({kBatch, kSeq, d});
    Tensor ids_c = Tensor::empty({kBatch, kSeq}, DType::I32);
    for (int64_t i = 0; i < n; ++i) {
      ids_c.data<int32_t>()[i] = compress[x[i]];
      for (int c = 0; c < d; ++c) h.data<float>()[i * d + c] = embed.data<float>()[x[i] * d + c];
    }
    auto add = [](const Tensor& a, const Tensor& b) {
      Tensor s = a.clone();
      for (int64_t i = 0; i < s.numel(); ++i) s.data<float>()[i] += b.data<float>()[i];
      return s;
    };
    const LossWeights w = batch_weights(batch);
    double aux = 0.0, z = 0.0;
    std::vector<std::vector<int64_t>> loads;
    for (int l = 0; l < cfg.n_layers(); ++l) {
      if (ref.engram[l]) h = add(h, ref.engram[l]->forward(h, ids_c));
      h = add(h, ref.attn[l]->forward(ref.attn_norm[l]->forward(h)));
      const Tensor normed = ref.ffn_norm[l]->forward(h).view({n, d});
      if (ref.mlp[l]) {
        h = add(h, ref.mlp[l]->forward(normed).view(h.shape()));
      } else {
        h = add(h, ref.moe[l]->forward(normed, w).view(h.shape()));
        aux += ref.moe[l]->last_aux_loss();
        z += ref.moe[l]->last_z_loss();
        loads.push_back(ref.moe[l]->last_load());
      }
    }
    const Tensor hn = ref.final_norm->forward(h);
    double ce_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> logit(kVocab, 0.0);
      double max = -1e300, z_sum = 0.0;
      for (int v = 0; v < kVocab; ++v) {
        for (int c = 0; c < d; ++c)
          logit[v] += static_cast<double>(hn.data<float>()[i * d + c]) * head.data<float>()[v * d + c];
        max = std::max(max, logit[v]);
      }
      for (double l : logit) z_sum += std::exp(l - max);
      ce_sum += max + std::log(z_sum) - logit[y[i]];
    }

    EXPECT_EQ(stats.n_targets, n);
    EXPECT_NEAR(stats.ce_sum, ce_sum, 1e-5 * std::abs(ce_sum)) << "tie " << tie;
    EXPECT_GT(aux, 0.0);
    EXPECT_GT(z, 0.0);
    EXPECT_NEAR(stats.aux_loss, aux, 1e-6 * aux) << "tie " << tie;
    EXPECT_NEAR(stats.z_loss, z, 1e-6 * z) << "tie " << tie;
    EXPECT_EQ(stats.expert_load, loads);
    ASSERT_EQ(stats.engram_gate_mean.size(), 2u);
    EXPECT_NEAR(stats.engram_gate_mean[0], ref.engram[0]->last_gate_mean(), 1e-6);
    EXPECT_NEAR(stats.engram_gate_mean[1], ref.engram[2]->last_gate_mean(), 1e-6);
  }
}

TEST(GradcheckModel, EvaluationForwardReportsWhatForwardBackwardReports) {
  const ModelConfig cfg = tiny_config(false, true);
  Model model(cfg, compress_table());
  std::mt19937 rng(3);
  randomize_parameters(model.params(), rng);
  const Batch batch = random_batch(rng);
  const ForwardStats eval = model.forward(batch);
  const ForwardStats train = model.forward_backward(batch, batch_weights(batch));
  EXPECT_EQ(eval.ce_sum, train.ce_sum);
  EXPECT_EQ(eval.n_targets, train.n_targets);
  EXPECT_EQ(eval.aux_loss, train.aux_loss);
  EXPECT_EQ(eval.z_loss, train.z_loss);
  EXPECT_EQ(eval.expert_load, train.expert_load);
  EXPECT_EQ(eval.engram_gate_mean, train.engram_gate_mean);
  ASSERT_EQ(eval.expert_load.size(), 2u);
  for (const auto& load : eval.expert_load)
    EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t{0}), batch.inputs.numel() * 2);
}

// ---- backward ------------------------------------------------------------------------------

constexpr float kMinAbsGateScore = 0.05f;
constexpr float kMinSelectionMargin = 0.01f;

// Smallest gap, over tokens and MoE layers, between the last selected and the first unselected
// biased score.
float min_selection_margin(Model& model) {
  const int k = model.config().moe().top_k();
  float smallest = INFINITY;
  for (MoELayer* moe : model.moe_layers()) {
    const Tensor& scores = moe->last_scores();
    const std::vector<float> s = scores.to_vector<float>(), bias = moe->balancing_bias().value.to_vector<float>();
    const int64_t n_experts = scores.cols();
    for (int64_t t = 0; t < scores.rows(); ++t) {
      std::vector<float> biased(bias);
      for (int64_t e = 0; e < n_experts; ++e) biased[e] += s[t * n_experts + e];
      std::sort(biased.begin(), biased.end(), std::greater<>());
      smallest = std::min(smallest, biased[k - 1] - biased[k]);
    }
  }
  return smallest;
}

float min_abs_gate_score(Model& model) {
  float smallest = INFINITY;
  for (EngramModule* engram : model.engram_modules())
    for (float s : engram->last_scores().to_vector<float>()) smallest = std::min(smallest, std::abs(s));
  return smallest;
}

void check_model_gradients(bool tie, bool aux_and_z, unsigned seed) {
  const ModelConfig cfg = tiny_config(tie, aux_and_z);
  Model model(cfg, compress_table());
  ParameterRegistry& params = model.params();
  EXPECT_EQ(params.contains("output.weight"), !tie);
  std::mt19937 rng(seed);
  // Redrawn until no token sits near a non-smooth point: an Engram gate score near the cusp of
  // sqrt(|s|) at 0, or a near-tie at the edge of a top-k selection. Perturbing almost any upstream
  // element would then cross it, and which tokens land near one depends on the BLAS's rounding, so
  // the number of checked elements would depend on the machine.
  Batch batch;
  for (int draw = 0;; ++draw) {
    ASSERT_LT(draw, 200) << "no draw keeps the gate scores and top-k selections away from their kinks";
    randomize_parameters(params, rng);
    batch = random_batch(rng);
    model.forward(batch);
    if (min_abs_gate_score(model) >= kMinAbsGateScore && min_selection_margin(model) >= kMinSelectionMargin)
      break;
  }

  // Prefilled dense gradients: backward must accumulate.
  params.zero_grads();
  for (Parameter* p : params.all())
    if (p->grad.defined()) test::fill_normal(p->grad, rng);
  const test::GradientSnapshot grad_before(params);
  const ForwardStats stats = model.forward_backward(batch, batch_weights(batch));
  if (aux_and_z) {
    EXPECT_GT(stats.aux_loss, 0.0);
    EXPECT_GT(stats.z_loss, 0.0);
  } else {
    EXPECT_EQ(stats.aux_loss, 0.0);
    EXPECT_EQ(stats.z_loss, 0.0);
  }

  // The whole model has non-smooth points the test cannot see from outside: expert-selection
  // switches, caught by the routing signature, and the cusp of the Engram gate's sqrt(|s|) at s = 0,
  // caught by the kink guard. Elements where either lies within the stencil are skipped. The
  // three-point central stencil spans half the range of the five-point one, so it straddles fewer.
  auto evaluate = [&] {
    const ForwardStats s = model.forward(batch);
    return Eval{objective(s), routing_signature(s)};
  };
  test::FdOptions opt{
      .eps = 1e-3, .rtol = 1e-2, .atol = 2e-4, .stencil = test::Stencil::Central, .kink_guard = true};
  test::FdResult total;
  for (Parameter* p : params.all()) {
    if (p->group == OptimGroup::NotTrained) {
      EXPECT_FALSE(p->grad.defined()) << p->name;
      continue;
    }
    if (p->group == OptimGroup::SparseTable) {
      ASSERT_EQ(p->row_grads.size(), 1u) << p->name;
    }
    // Tables and embeddings have many rows this batch never reads: sample more of them.
    opt.samples = p->group == OptimGroup::SparseTable || p->name == "tok_embeddings.weight" ? 40 : 12;
    const auto r = test::check_gradient(p->name, p->value, grad_before.added(*p), evaluate, rng, opt);
    EXPECT_GE(r.checked, 3) << p->name << ": too many elements skipped";
    EXPECT_GT(r.max_abs_grad, 0.0) << p->name << ": no checked element has gradient";
    total += r;
  }
  EXPECT_GE(total.checked, total.attempted() * 85 / 100)
      << "too many elements skipped (" << total.skipped << " of " << total.attempted() << ")";
}

TEST(GradcheckModel, UntiedNoAuxLosses) { check_model_gradients(false, false, 1); }
TEST(GradcheckModel, UntiedWithAuxAndZLoss) { check_model_gradients(false, true, 2); }
TEST(GradcheckModel, TiedNoAuxLosses) { check_model_gradients(true, false, 3); }
TEST(GradcheckModel, TiedWithAuxAndZLoss) { check_model_gradients(true, true, 4); }

}  // namespace
}  // namespace engram
