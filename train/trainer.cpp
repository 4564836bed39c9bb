#include "train/trainer.h"

#include "optim/bias_update.h"
#include "optim/grad_norm.h"
#include "optim/schedule.h"

namespace engram {

namespace {

// sum += x element by element (sum starts empty).
template <class T>
void add_elementwise(std::vector<T>& sum, const std::vector<T>& x) {
  sum.resize(x.size(), T{});
  for (size_t i = 0; i < x.size(); ++i) sum[i] += x[i];
}

}  // namespace

Trainer::Trainer(Model& model, const config::OptimConfig& cfg, int64_t max_steps)
    : model_(model),
      cfg_(cfg),
      max_steps_(max_steps),
      adamw_(model.params(), cfg_),
      sparse_adam_(model.params(), cfg_) {
  EG_CHECK(max_steps >= 1, "train.max_steps = ", max_steps, " must be >= 1");
}

StepMetrics Trainer::step(const std::vector<Batch>& micro_batches) {
  StepMetrics metrics = accumulate_gradients(micro_batches);
  reduce_gradients();
  metrics.grad_norm = global_grad_norm(model_.params());
  const float grad_scale = clip_factor(metrics.grad_norm, cfg_.grad_clip());
  metrics.lr = learning_rate(cfg_, steps_done_, max_steps_);
  apply_updates(metrics.lr, grad_scale);
  update_balancing_biases(metrics.expert_load);
  metrics.step = ++steps_done_;
  return metrics;
}

StepMetrics Trainer::accumulate_gradients(const std::vector<Batch>& micro_batches) {
  EG_CHECK(!micro_batches.empty(), "a training step needs at least one micro-batch");
  int64_t targets = 0;
  for (const Batch& batch : micro_batches) targets += batch.targets.numel();
  EG_CHECK(targets > 0, "a training step needs at least one target token");
  const LossWeights weights{1.0f / static_cast<float>(targets),
                            1.0f / static_cast<float>(micro_batches.size())};

  model_.params().zero_grads();
  StepMetrics metrics;
  double ce_sum = 0.0;
  for (const Batch& batch : micro_batches) {
    const ForwardStats stats = model_.forward_backward(batch, weights);
    ce_sum += stats.ce_sum;
    metrics.aux_loss += stats.aux_loss;
    metrics.z_loss += stats.z_loss;
    metrics.expert_load.resize(stats.expert_load.size());
    for (size_t layer = 0; layer < stats.expert_load.size(); ++layer)
      add_elementwise(metrics.expert_load[layer], stats.expert_load[layer]);
    add_elementwise(metrics.engram_gate_mean, stats.engram_gate_mean);
  }
  for (double& gate : metrics.engram_gate_mean) gate /= static_cast<double>(micro_batches.size());
  metrics.loss = ce_sum / static_cast<double>(targets);
  metrics.tokens = targets;
  return metrics;
}

void Trainer::reduce_gradients() { merge_row_grads(model_.params()); }

void Trainer::apply_updates(float lr, float grad_scale) {
  const int64_t step_1based = steps_done_ + 1;
  adamw_.step(lr, grad_scale, step_1based);
  sparse_adam_.step(lr, grad_scale, step_1based);  // applies table_lr_mult itself
}

void Trainer::update_balancing_biases(const std::vector<std::vector<int64_t>>& expert_load) {
  const std::vector<MoELayer*> layers = model_.moe_layers();
  EG_ASSERT(layers.size() == expert_load.size(), "expert loads for ", expert_load.size(), " of ",
            layers.size(), " MoE layers");
  for (size_t i = 0; i < layers.size(); ++i)
    update_balancing_bias(layers[i]->balancing_bias().value, expert_load[i],
                          model_.config().moe().bias_update_rate());
}

}  // namespace engram
