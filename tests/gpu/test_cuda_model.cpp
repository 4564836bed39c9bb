// The whole model and trainer on the GPU against the CPU reference, on a small config with every
// feature on (dense and MoE layers with a shared expert, aux and z-loss, two Engram layers):
// - float32 matmul mode: the same expert selections, the loss within 1e-5 relative and every
//   gradient (tables through their row grads) within 1e-3 of its tensor's largest magnitude: the two
//   backends sum in different orders, and that is all that differs;
// - bf16 mode (DESIGN.md decision 7): the loss within 1e-3 relative (measured 7e-6) and the
//   gradients, all parameters together, within 25% relative L2 (measured 17% on the H100, with no
//   top-k selection changed: the test prints both). The error sits in the tensors feeding the Engram
//   gate's q and k (token embeddings 23%, tables 18%): its derivative 1/(2√|s|) magnifies the bf16
//   error of s for tokens near the cusp at 0 (what the float32 gradcheck has to steer around too);
// - at head_dim 64 under bf16 (the tensor-core attention, with bf16 q, k, v, o and dV), a dense model
//   without Engram keeps every gradient within 5% relative L2 of the CPU's (not yet run on a GPU);
// - training steps on the GPU give the CPU's losses (float32 mode) and repeat bitwise run to run, in
//   float32 and in bf16 mode (bf16: losses within 1% of the CPU's; not yet run on a GPU).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/matmul_precision.h"
#include "model/model.h"
#include "model/moe.h"
#include "tests/gpu/cuda_test_util.h"
#include "tests/gpu/small_model.h"
#include "train/trainer.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaModel = CudaTest;

constexpr int kVocab = kSmallModelVocab, kBatch = 2, kSeq = 40;

Batch random_batch(std::mt19937& rng) {
  return testing_util::random_unrelated_batch<Batch>(kBatch, kSeq, kVocab, rng);
}

LossWeights weights_of(const Batch& b) { return {1.0f / static_cast<float>(b.targets.numel()), 1.0f}; }

// A parameter's gradient as a dense host vector: the dense grad, or the row grads summed into rows.
std::vector<double> dense_gradient(const Parameter& p) {
  std::vector<double> g(static_cast<size_t>(p.value.numel()), 0.0);
  if (p.grad.defined()) {
    const std::vector<float> values = p.grad.to_vector<float>();
    for (size_t i = 0; i < g.size(); ++i) g[i] = values[i];
    return g;
  }
  const int64_t cols = p.value.cols();
  for (const RowGrads& rg : p.row_grads) {
    const std::vector<int64_t> rows = rg.rows.to_vector<int64_t>();
    const std::vector<float> values = rg.values.to_vector<float>();
    for (size_t u = 0; u < rows.size(); ++u)
      for (int64_t c = 0; c < cols; ++c) g[rows[u] * cols + c] += values[u * cols + c];
  }
  return g;
}

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// The same random values on both: the Engram conv starts at zero (MODEL.md §5), which would leave
// its input norm's gain without gradient.
void randomize_conv_weights(Model& cpu, Model& gpu) {
  std::mt19937 rng(3);
  for (size_t i = 0; i < cpu.params().all().size(); ++i) {
    Parameter& c = *cpu.params().all()[i];
    if (c.name.find("conv.weight") == std::string::npos) continue;
    c.value.copy_from(random_uniform(c.value.shape(), rng, -0.5f, 0.5f));
    gpu.params().all()[i]->value.copy_from(c.value);
  }
}

struct Comparison {
  ForwardStats cpu, gpu;
  Model cpu_model, gpu_model;
  explicit Comparison(const ModelConfig& cfg = small_model_config())
      : cpu_model(cfg), gpu_model(cfg, {}, nullptr, Device::CUDA) {
    randomize_conv_weights(cpu_model, gpu_model);
  }
};

// Σ (gpu − cpu)² and Σ cpu² of a parameter's gradient.
struct GradientError {
  double diff_sq = 0.0, norm_sq = 0.0;
  double relative() const { return std::sqrt(diff_sq / std::max(norm_sq, 1e-300)); }
};
GradientError gradient_error(const Parameter& cpu, const Parameter& gpu) {
  const std::vector<double> want = dense_gradient(cpu), got = dense_gradient(gpu);
  GradientError e;
  for (size_t j = 0; j < want.size(); ++j) {
    e.diff_sq += (got[j] - want[j]) * (got[j] - want[j]);
    e.norm_sq += want[j] * want[j];
  }
  return e;
}

// One forward and backward of the same batch on both backends (prefilled gradients are zero).
void run_both(Comparison& c, unsigned seed) {
  std::mt19937 rng(seed);
  const Batch batch = random_batch(rng);
  c.cpu_model.params().zero_grads();
  c.gpu_model.params().zero_grads();
  c.cpu = c.cpu_model.forward_backward(batch, weights_of(batch));
  c.gpu = c.gpu_model.forward_backward(batch, weights_of(batch));
}

TEST_F(CudaModel, Float32LossAndGradientsMatchTheCpu) {
  Comparison c;
  run_both(c, 11);
  ASSERT_EQ(c.gpu.expert_load, c.cpu.expert_load) << "expert selections differ";
  EXPECT_NEAR(c.gpu.ce_sum, c.cpu.ce_sum, 1e-5 * std::abs(c.cpu.ce_sum));
  EXPECT_NEAR(c.gpu.aux_loss, c.cpu.aux_loss, 1e-5 * std::abs(c.cpu.aux_loss) + 1e-9);
  EXPECT_NEAR(c.gpu.z_loss, c.cpu.z_loss, 1e-5 * std::abs(c.cpu.z_loss) + 1e-9);
  ASSERT_EQ(c.gpu.engram_gate_mean.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(c.gpu.engram_gate_mean[i], c.cpu.engram_gate_mean[i], 1e-5);

  const auto& cpu_params = c.cpu_model.params().all();
  const auto& gpu_params = c.gpu_model.params().all();
  ASSERT_EQ(cpu_params.size(), gpu_params.size());
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    if (cpu_params[i]->group == OptimGroup::NotTrained) continue;
    EXPECT_EQ(gpu_params[i]->value.device(), Device::CUDA) << gpu_params[i]->name;
    const std::vector<double> want = dense_gradient(*cpu_params[i]), got = dense_gradient(*gpu_params[i]);
    const double scale = max_abs(want);
    EXPECT_GT(scale, 0.0) << cpu_params[i]->name << ": no gradient";
    double worst = 0.0;
    for (size_t j = 0; j < want.size(); ++j) worst = std::max(worst, std::abs(got[j] - want[j]));
    EXPECT_LE(worst, 1e-3 * scale) << cpu_params[i]->name << ": largest difference " << worst << " of scale "
                                   << scale;
  }
}

TEST_F(CudaModel, Bf16ModeStaysCloseToTheCpu) {
  Comparison c;
  {
    const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
    run_both(c, 12);
  }
  EXPECT_NEAR(c.gpu.ce_sum, c.cpu.ce_sum, 1e-3 * std::abs(c.cpu.ce_sum));
  int64_t moved = 0;  // assignments whose expert changed (total load difference / 2)
  for (size_t layer = 0; layer < c.cpu.expert_load.size(); ++layer)
    for (size_t e = 0; e < c.cpu.expert_load[layer].size(); ++e)
      moved += std::abs(c.gpu.expert_load[layer][e] - c.cpu.expert_load[layer][e]);
  std::printf("bf16 vs cpu: %lld of %lld top-k assignments changed expert\n", static_cast<long long>(moved / 2),
              static_cast<long long>(2 * kBatch * kSeq * small_model_config().moe().top_k()));
  GradientError all;
  const auto& cpu_params = c.cpu_model.params().all();
  const auto& gpu_params = c.gpu_model.params().all();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    if (cpu_params[i]->group == OptimGroup::NotTrained) continue;
    const GradientError e = gradient_error(*cpu_params[i], *gpu_params[i]);
    std::printf("bf16 vs cpu: %-36s relative L2 gradient error %.2e\n", cpu_params[i]->name.c_str(), e.relative());
    all.diff_sq += e.diff_sq;
    all.norm_sq += e.norm_sq;
  }
  std::printf("bf16 vs cpu: loss %.6f vs %.6f; all gradients: relative L2 error %.2e\n", c.gpu.ce_sum / c.gpu.n_targets,
              c.cpu.ce_sum / c.cpu.n_targets, all.relative());
  EXPECT_LE(all.relative(), 0.25);
}

// The tensor-core attention inside the model (bf16 q, k, v, o and dV between the products and the
// kernels), on a config with nothing else that magnifies bf16 error: dense layers only (no top-k to
// flip) and no Engram (no gate cusp). A dtype or layout slip in that wiring gives errors of order 1;
// bf16 rounding gives a few percent at most.
TEST_F(CudaModel, Bf16TensorCoreAttentionInTheModelStaysCloseToTheCpu) {
  ModelConfig cfg = head_dim_64_model_config();
  cfg.set_n_dense_layers(cfg.n_layers());
  cfg.mutable_engram()->clear_layers();
  Comparison c(cfg);
  {
    const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
    if (kernels::attention_operand_dtype(Device::CUDA, cfg.d_model() / cfg.n_heads()) != DType::BF16)
      GTEST_SKIP() << "this GPU does not run the tensor-core attention at head_dim 64";
    run_both(c, 14);
  }
  EXPECT_NEAR(c.gpu.ce_sum, c.cpu.ce_sum, 1e-3 * std::abs(c.cpu.ce_sum));
  const auto& cpu_params = c.cpu_model.params().all();
  const auto& gpu_params = c.gpu_model.params().all();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    if (cpu_params[i]->group == OptimGroup::NotTrained) continue;
    const double error = gradient_error(*cpu_params[i], *gpu_params[i]).relative();
    std::printf("bf16 vs cpu, head_dim 64: %-28s relative L2 gradient error %.2e\n", cpu_params[i]->name.c_str(),
                error);
    EXPECT_LE(error, 0.05) << cpu_params[i]->name;
  }
}

// The router multiplies in float32 under bf16 matmuls too (DESIGN.md decision 7): the same f32 input
// gives bitwise the scores of the float32 mode (bf16 operands would round both x and W_r).
TEST_F(CudaModel, MoeRouterScoresIgnoreBf16Precision) {
  const ModelConfig cfg = small_model_config();
  ParameterRegistry params;
  MoELayer moe(cfg, 1, params);
  params.initialize(cfg.seed());
  params.move_to(Device::CUDA);
  std::mt19937 rng(5);
  const Tensor x = random_uniform({kBatch * kSeq, cfg.d_model()}, rng).copy_to(Device::CUDA);
  const LossWeights w{1.0f, 1.0f};
  moe.forward(x, w);
  const Tensor float32_scores = moe.last_scores().copy_to(Device::CPU);
  {
    const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
    moe.forward(x, w);
  }
  EXPECT_TRUE(bitwise_equal(moe.last_scores().copy_to(Device::CPU), float32_scores));
}

config::OptimConfig optim_config() {
  config::OptimConfig cfg;
  cfg.set_lr(1e-3f);
  cfg.set_warmup_steps(1);
  return cfg;
}

// Losses of `steps` optimizer steps on fixed batches, and the final parameter values (host copies).
struct TrainingRun {
  std::vector<double> losses;
  std::vector<Tensor> values;
};
TrainingRun train(Device device, int steps, const ModelConfig& cfg) {
  Model model(cfg, {}, nullptr, device);
  Trainer trainer(model, optim_config(), steps);
  std::mt19937 rng(13);
  TrainingRun run;
  for (int s = 0; s < steps; ++s) {
    const std::vector<Batch> micro_batches{random_batch(rng), random_batch(rng)};
    run.losses.push_back(trainer.step(micro_batches).loss);
  }
  for (const Parameter* p : model.params().all()) run.values.push_back(p->value.copy_to(Device::CPU));
  return run;
}

// 3 steps on the CPU and twice on the GPU (in the matmul precision in force): the GPU's losses within
// `loss_rtol` of the CPU's, and the two GPU runs bitwise equal, losses and final parameters.
void expect_steps_follow_the_cpu_and_repeat_bitwise(const ModelConfig& cfg, double loss_rtol) {
  const TrainingRun cpu = train(Device::CPU, 3, cfg);
  const TrainingRun gpu = train(Device::CUDA, 3, cfg), again = train(Device::CUDA, 3, cfg);
  for (size_t s = 0; s < cpu.losses.size(); ++s) {
    EXPECT_NEAR(gpu.losses[s], cpu.losses[s], loss_rtol * cpu.losses[s]) << "step " << s + 1;
    EXPECT_EQ(gpu.losses[s], again.losses[s]) << "step " << s + 1;
  }
  ASSERT_EQ(gpu.values.size(), again.values.size());
  for (size_t i = 0; i < gpu.values.size(); ++i)
    EXPECT_TRUE(bitwise_equal(gpu.values[i], again.values[i])) << "parameter " << i << " differs between runs";
}

TEST_F(CudaModel, TrainingStepsFollowTheCpuAndRepeatBitwise) {
  expect_steps_follow_the_cpu_and_repeat_bitwise(small_model_config(), 1e-4);
}

// The fast path repeats bitwise too: bf16 matmuls at head_dim 64, so the tensor-core attention and
// the bf16 expert products and hiddens all run; losses stay near the CPU's.
TEST_F(CudaModel, Bf16TrainingStepsRepeatBitwise) {
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  expect_steps_follow_the_cpu_and_repeat_bitwise(head_dim_64_model_config(), 1e-2);
}

}  // namespace
}  // namespace engram
