#include "train/trainer.h"

#include <algorithm>
#include <cmath>

#include "optim/bias_update.h"
#include "optim/grad_norm.h"
#include "optim/schedule.h"
#include "parallel/moe_dispatcher.h"
#include "parallel/process_groups.h"
#include "parallel/sharded_table.h"
#include "runtime/trace_range.h"

namespace engram {

namespace {

// sum += x element by element (sum starts empty).
template <class T>
void add_elementwise(std::vector<T>& sum, const std::vector<T>& x) {
  sum.resize(x.size(), T{});
  for (size_t i = 0; i < x.size(); ++i) sum[i] += x[i];
}

}  // namespace

Trainer::Trainer(Model& model, const config::OptimConfig& cfg, int64_t max_steps, int64_t grad_bucket_bytes)
    : model_(model),
      groups_(model.groups()),
      cfg_(cfg),
      max_steps_(max_steps),
      adamw_(model.params(), cfg_),
      sparse_adam_(model.params(), cfg_) {
  EG_CHECK(max_steps >= 1, "train.max_steps = ", max_steps, " must be >= 1");
  if (groups_) buckets_.emplace(model.params(), *groups_, grad_bucket_bytes);
}

StepMetrics Trainer::step(const std::vector<Batch>& micro_batches) {
  StepMetrics metrics = accumulate_gradients(micro_batches);
  reduce_gradients();
  metrics.grad_norm = grad_norm();
  const float grad_scale = clip_factor(metrics.grad_norm, cfg_.grad_clip());
  metrics.lr = learning_rate(cfg_, steps_done_, max_steps_);
  apply_updates(metrics.lr, grad_scale);
  update_balancing_biases(metrics.expert_load);
  metrics.step = ++steps_done_;
  return metrics;
}

StepMetrics Trainer::accumulate_gradients(const std::vector<Batch>& micro_batches) {
  int64_t targets = 0;
  for (const Batch& batch : micro_batches) targets += batch.targets.numel();
  int64_t global_micro_batches = static_cast<int64_t>(micro_batches.size());
  if (groups_) {
    // Forward and backward are collective: every rank must run the same number of micro-batches.
    // Checked after exchanging the counts, so every rank raises the same error instead of one
    // rank leaving the others waiting.
    Communicator& world = groups_->world();
    const std::vector<int64_t> counts = world.all_gather(std::vector<int64_t>{global_micro_batches});
    for (int r = 0; r < world.size(); ++r)
      EG_CHECK(counts[r] == counts[0], "rank ", r, " has ", counts[r], " micro-batches but rank 0 has ",
               counts[0], " (every rank needs the same number)");
    global_micro_batches *= world.size();
    targets = world.all_reduce_sum(targets);
  }
  EG_CHECK(global_micro_batches > 0, "a training step needs at least one micro-batch");
  EG_CHECK(targets > 0, "a training step needs at least one target token");
  const LossWeights weights{1.0f / static_cast<float>(targets),
                            1.0f / static_cast<float>(global_micro_batches)};

  model_.params().zero_grads();
  StepMetrics metrics;
  double ce_sum = 0.0;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    // The last micro-batch's backward finishes the gradients: its buckets start as they become final.
    GradientsFinal start_buckets;
    if (buckets_ && i + 1 == micro_batches.size())
      start_buckets = [this](size_t first_final) { buckets_->gradients_final_from(first_final); };
    const ForwardStats stats = model_.forward_backward(micro_batches[i], weights, start_buckets);
    ce_sum += stats.ce_sum;
    metrics.aux_loss += stats.aux_loss;
    metrics.z_loss += stats.z_loss;
    metrics.expert_load.resize(stats.expert_load.size());
    for (size_t layer = 0; layer < stats.expert_load.size(); ++layer)
      add_elementwise(metrics.expert_load[layer], stats.expert_load[layer]);
    add_elementwise(metrics.engram_gate_mean, stats.engram_gate_mean);
    add_traffic(metrics);
  }
  reduce_metrics(metrics, ce_sum);
  for (double& gate : metrics.engram_gate_mean) gate /= static_cast<double>(global_micro_batches);
  metrics.loss = ce_sum / static_cast<double>(targets);
  metrics.tokens = targets;
  return metrics;
}

void Trainer::add_traffic(StepMetrics& metrics) {
  for (MoELayer* moe : model_.moe_layers())
    if (const ExpertDispatcher* d = moe->dispatcher())
      metrics.dispatch_bytes_sent += d->last_forward_stats().bytes_sent + d->last_backward_stats().bytes_sent;
  for (EngramModule* engram : model_.engram_modules())
    if (const ShardedTable* t = engram->sharded_table()) {
      metrics.table_bytes_sent += t->last_lookup_stats().bytes_sent + t->last_backward_stats().bytes_sent;
      metrics.table_requests += t->last_lookup_stats().requested;
      metrics.table_unique_rows += t->last_lookup_stats().unique;
    }
}

void Trainer::reduce_metrics(StepMetrics& metrics, double& ce_sum) const {
  if (!groups_) return;
  Communicator& world = groups_->world();
  std::vector<double> sums{ce_sum, metrics.aux_loss, metrics.z_loss};
  sums.insert(sums.end(), metrics.engram_gate_mean.begin(), metrics.engram_gate_mean.end());
  world.all_reduce_sum(sums);
  ce_sum = sums[0];
  metrics.aux_loss = sums[1];
  metrics.z_loss = sums[2];
  std::copy(sums.begin() + 3, sums.end(), metrics.engram_gate_mean.begin());
  for (std::vector<int64_t>& load : metrics.expert_load) world.all_reduce_sum(load);
  std::vector<int64_t> traffic{metrics.dispatch_bytes_sent, metrics.table_bytes_sent, metrics.table_requests,
                               metrics.table_unique_rows};
  world.all_reduce_sum(traffic);
  metrics.dispatch_bytes_sent = traffic[0];
  metrics.table_bytes_sent = traffic[1];
  metrics.table_requests = traffic[2];
  metrics.table_unique_rows = traffic[3];
}

void Trainer::reduce_gradients() {
  const TraceRange range("gradient reduction");
  merge_row_grads(model_.params());
  if (buckets_) buckets_->finish();  // tables need no sum: their owners already hold every rank's
}

double Trainer::grad_norm() const {
  const TraceRange range("gradient norm");
  if (!groups_) return global_grad_norm(model_.params());
  // Each copy counted once: replicated ones on world rank 0, expert blocks on the first rank of their
  // expert-data-parallel group, table rows on their owner.
  const ParallelLayout& layout = groups_->layout();
  std::vector<const Parameter*> counted;
  for (const Parameter* p : model_.params().all()) {
    if (p->shard == ShardKind::Rows || (p->shard == ShardKind::Experts && layout.edp_rank == 0) ||
        (p->shard == ShardKind::Replicated && layout.rank == 0))
      counted.push_back(p);
  }
  return std::sqrt(groups_->world().all_reduce_sum(grad_sum_squares(counted)));
}

void Trainer::apply_updates(float lr, float grad_scale) {
  const TraceRange range("optimizer");
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
