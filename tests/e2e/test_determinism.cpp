// Trainer end to end on a tiny model with every feature (dense + MoE layers, Engram):
// - two identical runs of 20 steps over the same fixed batches give bitwise-identical losses,
//   gradient norms and final parameters (balancing biases and Engram tables included), and the
//   loss falls clearly while the model fits the batches;
// - splitting a global batch into micro-batches gives the gradients of the whole batch in one piece
//   (LossWeights normalize by the global target count).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "model/model.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace engram {
namespace {

constexpr int kVocab = 32, kSeq = 8;

ModelConfig tiny_config() {
  ModelConfig cfg;
  cfg.set_vocab_size(kVocab);
  cfg.set_d_model(16);
  cfg.set_n_heads(2);
  cfg.set_n_layers(2);
  cfg.set_n_dense_layers(1);
  cfg.set_d_ff(32);
  cfg.set_seed(1234);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(4);
  moe->set_top_k(2);
  moe->set_expert_d_ff(16);
  moe->set_n_shared_experts(1);
  moe->set_bias_update_rate(0.01f);
  moe->set_z_loss_coeff(0.01f);
  auto* engram = cfg.mutable_engram();
  engram->add_layers(1);
  engram->set_max_ngram(3);
  engram->set_heads_per_ngram(2);
  engram->set_head_dim(4);
  engram->add_table_size(31);
  engram->add_table_size(37);
  return cfg;
}

config::OptimConfig optim_config() {
  config::OptimConfig o;
  o.set_lr(1e-2f);
  o.set_min_lr(1e-3f);
  o.set_warmup_steps(2);
  return o;
}

Batch random_batch(int64_t rows, std::mt19937& rng) {
  return testing_util::random_batch<Batch>(rows, kSeq, kVocab, rng);
}

struct TrainingRun {
  std::vector<double> losses, grad_norms;
  std::vector<std::vector<float>> params;
};

TrainingRun train_run(int steps) {
  std::mt19937 rng(99);
  std::vector<Batch> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(random_batch(2, rng));
  Model model(tiny_config());
  Trainer trainer(model, optim_config(), steps);
  TrainingRun run;
  for (int s = 0; s < steps; ++s) {
    // Two micro-batches per step, cycling through the four fixed batches.
    const StepMetrics m = trainer.step({batches[(2 * s) % 4], batches[(2 * s + 1) % 4]});
    EXPECT_EQ(m.step, s + 1);
    EXPECT_EQ(m.tokens, 2 * 2 * kSeq);
    EXPECT_TRUE(std::isfinite(m.loss) && m.grad_norm > 0.0) << "step " << s;
    EXPECT_GT(m.z_loss, 0.0);
    EXPECT_EQ(m.aux_loss, 0.0);
    EXPECT_GT(m.lr, 0.0f);
    EXPECT_EQ(m.expert_load.size(), 1u);
    for (const auto& load : m.expert_load)
      EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t{0}), m.tokens * 2);  // top_k = 2
    EXPECT_EQ(m.engram_gate_mean.size(), 1u);
    for (double g : m.engram_gate_mean) EXPECT_TRUE(g > 0.0 && g < 1.0) << g;
    run.losses.push_back(m.loss);
    run.grad_norms.push_back(m.grad_norm);
  }
  EXPECT_EQ(trainer.steps_done(), steps);
  for (const Parameter* p : model.params().all()) run.params.push_back(p->value.to_vector<float>());
  return run;
}

bool bitwise_equal(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

TEST(Determinism, TwoRunsAreBitwiseIdenticalAndTheLossFalls) {
  const int steps = 20;
  const TrainingRun a = train_run(steps);
  const TrainingRun b = train_run(steps);
  EXPECT_TRUE(bitwise_equal(a.losses, b.losses));
  EXPECT_TRUE(bitwise_equal(a.grad_norms, b.grad_norms));
  ASSERT_EQ(a.params.size(), b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    ASSERT_EQ(a.params[i].size(), b.params[i].size());
    EXPECT_EQ(std::memcmp(a.params[i].data(), b.params[i].data(), a.params[i].size() * sizeof(float)), 0)
        << "parameter #" << i << " differs between the runs";
  }
  // Steps alternate between the batch pairs (0, 1) and (2, 3): compare like with like.
  const double first = (a.losses[0] + a.losses[1]) / 2,
               last = (a.losses[steps - 2] + a.losses[steps - 1]) / 2;
  EXPECT_LT(last, first - 0.5) << "first " << first << ", last " << last;
}

TEST(Determinism, TrainingMovesEveryKindOfParameter) {
  std::mt19937 rng(5);
  const Batch batch = random_batch(2, rng);
  Model model(tiny_config());
  std::vector<std::vector<float>> before;
  for (const Parameter* p : model.params().all()) before.push_back(p->value.to_vector<float>());
  Trainer trainer(model, optim_config(), 10);
  // Two steps: the conv weights start at zero, so the conv norm's gain only gets gradient once
  // the first step has moved them.
  trainer.step({batch});
  trainer.step({batch});
  for (size_t i = 0; i < before.size(); ++i) {
    const Parameter* p = model.params().all()[i];
    EXPECT_NE(p->value.to_vector<float>(), before[i]) << p->name << " did not change";
  }
}

// The gradients a step leaves in the registry, tables' merged row grads expanded to dense.
std::vector<std::vector<float>> step_gradients(const std::vector<Batch>& micro_batches,
                                               StepMetrics& metrics) {
  Model model(tiny_config());
  Trainer trainer(model, optim_config(), 10);
  metrics = trainer.step(micro_batches);
  std::vector<std::vector<float>> grads;
  for (const Parameter* p : model.params().all()) {
    if (p->grad.defined()) {
      grads.push_back(p->grad.to_vector<float>());
    } else if (p->group == OptimGroup::SparseTable) {
      std::vector<float> dense(p->value.numel(), 0.0f);
      const int64_t cols = p->value.cols();
      EXPECT_EQ(p->row_grads.size(), 1u) << p->name << ": row grads not merged";
      for (const RowGrads& rg : p->row_grads)
        for (int64_t u = 0; u < rg.rows.numel(); ++u)
          for (int64_t c = 0; c < cols; ++c)
            dense[rg.rows.data<int64_t>()[u] * cols + c] += rg.values.data<float>()[u * cols + c];
      grads.push_back(dense);
    }
  }
  return grads;
}

TEST(Determinism, MicroBatchesAccumulateToTheGradientOfTheWholeBatch) {
  std::mt19937 rng(17);
  const Batch whole = random_batch(3, rng);
  // The same three sequences as micro-batches of 1 and 2 rows: unequal sizes, so a per-micro-batch
  // mean instead of the global per-token weight would show.
  const Batch first{whole.inputs.slice(0, 1), whole.targets.slice(0, 1)};
  const Batch rest{whole.inputs.slice(1, 3), whole.targets.slice(1, 3)};
  StepMetrics m_whole, m_split;
  const auto g_whole = step_gradients({whole}, m_whole);
  const auto g_split = step_gradients({first, rest}, m_split);
  EXPECT_NEAR(m_whole.loss, m_split.loss, 1e-6);
  EXPECT_NEAR(m_whole.z_loss, m_split.z_loss, 1e-7);
  EXPECT_NEAR(m_whole.grad_norm, m_split.grad_norm, 1e-5 * m_whole.grad_norm);
  EXPECT_EQ(m_whole.tokens, m_split.tokens);
  EXPECT_EQ(m_whole.expert_load, m_split.expert_load);
  ASSERT_EQ(g_whole.size(), g_split.size());
  for (size_t i = 0; i < g_whole.size(); ++i)
    for (size_t j = 0; j < g_whole[i].size(); ++j)
      ASSERT_NEAR(g_whole[i][j], g_split[i][j], 1e-6 + 1e-4 * std::abs(g_whole[i][j]))
          << "gradient #" << i << "[" << j << "]";
}

}  // namespace
}  // namespace engram
