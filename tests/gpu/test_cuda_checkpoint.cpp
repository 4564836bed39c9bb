// Checkpoints of GPU training under bf16 matmuls (the fast path: tensor-core attention at head_dim 64,
// bf16 expert products), on the small model of the GPU suite (tests/gpu/small_model.h):
// - 3 steps, a checkpoint, a fresh GPU model and trainer loading it, and 2 more steps equal 5
//   uninterrupted steps bitwise: losses, gradient norms, expert loads, parameters and both
//   optimizers' moments (DESIGN.md: resume continues bitwise-identically);
// - the checkpoint a GPU run wrote loads into a CPU model with the same values.
// Not yet run on a GPU (written in a session without one).
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/matmul_precision.h"
#include "tests/gpu/cuda_test_util.h"
#include "tests/gpu/small_model.h"
#include "tests/test_util.h"
#include "tests/training_state.h"
#include "train/checkpoint.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaCheckpoint = CudaTest;

constexpr int kVocab = kSmallModelVocab, kSeq = 24;

ExperimentConfig small_experiment() {
  ExperimentConfig cfg;
  *cfg.mutable_model() = head_dim_64_model_config();                // the tensor-core attention under bf16 matmuls
  cfg.mutable_model()->mutable_moe()->set_bias_update_rate(0.01f);  // balancing biases to restore too
  auto& optim = *cfg.mutable_optim();
  optim.set_lr(1e-2f);
  optim.set_min_lr(1e-3f);
  optim.set_warmup_steps(2);
  cfg.mutable_train()->set_max_steps(10);
  return cfg;
}

struct TrainingRun {
  TrainingRun(const ExperimentConfig& cfg, Device device)
      : model(cfg.model(), {}, nullptr, device), trainer(model, cfg.optim(), cfg.train().max_steps()) {}
  Model model;
  Trainer trainer;
};

// The global batch of step s: a function of s alone, as the data loader's order is.
std::vector<StepMetrics> train(TrainingRun& run, int steps) {
  std::vector<StepMetrics> out;
  for (int i = 0; i < steps; ++i) {
    std::mt19937 rng(1000 + static_cast<unsigned>(run.trainer.steps_done()));
    const std::vector<Batch> micro_batches{random_unrelated_batch<Batch>(2, kSeq, kVocab, rng),
                                           random_unrelated_batch<Batch>(2, kSeq, kVocab, rng)};
    out.push_back(run.trainer.step(micro_batches));
  }
  return out;
}

void expect_same_state(const TrainingRun& a, const TrainingRun& b) {
  expect_same_checkpoint_state(a.model, a.trainer, b.model, b.trainer);
}

TEST_F(CudaCheckpoint, Bf16ResumeEqualsUninterruptedRunBitwiseAndLoadsOnTheCpu) {
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  const ExperimentConfig cfg = small_experiment();
  const ScopedTempDir dir("test_cuda_checkpoint");
  const std::string run_dir = (dir.path() / "run").string();

  TrainingRun uninterrupted(cfg, Device::CUDA);
  const std::vector<StepMetrics> expected = train(uninterrupted, 5);
  std::map<std::string, Tensor> saved;  // the state the checkpoint was written from
  {
    TrainingRun first(cfg, Device::CUDA);
    train(first, 3);
    save_checkpoint(run_dir, cfg, first.model, first.trainer);
    saved = checkpoint_state(first.model, first.trainer);
  }
  TrainingRun resumed(cfg, Device::CUDA);
  load_checkpoint(latest_checkpoint(run_dir), cfg, resumed.model, resumed.trainer);
  const std::vector<StepMetrics> got = train(resumed, 2);
  expect_same_steps(got, expected, 3);
  expect_same_state(uninterrupted, resumed);

  // The GPU's checkpoint on the CPU: the values the GPU run saved, bit for bit.
  TrainingRun cpu_at_3(cfg, Device::CPU);
  load_checkpoint(latest_checkpoint(run_dir), cfg, cpu_at_3.model, cpu_at_3.trainer);
  EXPECT_EQ(cpu_at_3.model.params().all()[0]->value.device(), Device::CPU);
  EXPECT_EQ(cpu_at_3.trainer.steps_done(), 3);
  const std::map<std::string, Tensor> loaded = checkpoint_state(cpu_at_3.model, cpu_at_3.trainer);
  ASSERT_EQ(loaded.size(), saved.size());
  for (const auto& [name, t] : saved) EXPECT_TRUE(bitwise_equal(t, loaded.at(name))) << name;
}

}  // namespace
}  // namespace engram
