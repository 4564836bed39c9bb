#pragma once
// One optimizer step over a global batch (MODEL.md §2, §6): gradient accumulation over the
// micro-batches, global-norm clipping, AdamW + row-sparse Adam, and the MoE balancing-bias update.
// Distributed (the model was built with ProcessGroups): every rank passes its own micro-batches (the
// same number on every rank); loss weights use the world's target and micro-batch counts, dense
// gradients are summed over the world, expert gradients over the expert-data-parallel group, table
// row gradients already reach their owners in backward; the norm counts every parameter once, the
// balancing biases move by the world's loads and the metrics describe the whole global batch. The
// dense sums run in gradient buckets that start during the last micro-batch's backward pass
// (train/gradient_buckets.h).
#include <cstdint>
#include <optional>
#include <vector>

#include "model/model.h"
#include "optim/adamw.h"
#include "optim/sparse_adam.h"
#include "runtime/config/config.h"
#include "train/gradient_buckets.h"

namespace engram {

struct StepMetrics {
  int64_t step = 0;                               // optimizer steps done after this one (1 for the first)
  double loss = 0.0;                              // cross-entropy mean over the global batch's targets
  double aux_loss = 0.0;                          // MoE auxiliary loss, its share of the objective
  double z_loss = 0.0;                            // router z-loss, its share of the objective
  float lr = 0.0f;                                // learning rate of this update
  double grad_norm = 0.0;                         // global L2 gradient norm before clipping
  std::vector<std::vector<int64_t>> expert_load;  // per MoE layer, summed over micro-batches and ranks
  std::vector<double> engram_gate_mean;           // per Engram layer, mean over micro-batches
  int64_t tokens = 0;                             // targets in the global batch
  // Distributed only, summed over layers, micro-batches and ranks: bytes sent to other ranks by the
  // MoE token dispatcher and by the Engram table lookups (forward and backward), and the table row
  // requests and the distinct rows they needed per rank (dedup ratio = requests / unique).
  int64_t dispatch_bytes_sent = 0;
  int64_t table_bytes_sent = 0;
  int64_t table_requests = 0, table_unique_rows = 0;
  double table_dedup_ratio() const {
    return table_unique_rows > 0 ? static_cast<double>(table_requests) / table_unique_rows : 1.0;
  }
};

class Trainer {
 public:
  // grad_bucket_bytes: the size of the gradient buckets (distributed models only; parallel.grad_bucket_mb).
  Trainer(Model& model, const config::OptimConfig& cfg, int64_t max_steps,
          int64_t grad_bucket_bytes = engram::grad_bucket_bytes(config::ParallelConfig()));

  // One optimizer step over `micro_batches`: the whole global batch on one process, this rank's
  // slice of it when distributed (collective over the world then).
  StepMetrics step(const std::vector<Batch>& micro_batches);

  AdamW& adamw() { return adamw_; }
  SparseAdam& sparse_adam() { return sparse_adam_; }
  const AdamW& adamw() const { return adamw_; }
  const SparseAdam& sparse_adam() const { return sparse_adam_; }
  int64_t steps_done() const { return steps_done_; }
  void set_steps_done(int64_t steps) { steps_done_ = steps; }  // resuming from a checkpoint

 private:
  // Zeroes the gradients, then runs forward and backward over every micro-batch, each weighted so
  // that the summed gradients are those of the global-batch objective. Fills the loss metrics.
  StepMetrics accumulate_gradients(const std::vector<Batch>& micro_batches);
  // Combines what the micro-batches (and ranks) left per parameter (table row grads merged row by
  // row; the dense sums over ranks finish).
  void reduce_gradients();
  // Global L2 norm of all gradients, each parameter counted once over the ranks.
  double grad_norm() const;
  // Adds the last micro-batch's communication stats of every MoE layer and Engram table.
  void add_traffic(StepMetrics& metrics);
  // Sums the per-rank metrics over the world (no-op on one process).
  void reduce_metrics(StepMetrics& metrics, double& ce_sum) const;
  void apply_updates(float lr, float grad_scale);
  void update_balancing_biases(const std::vector<std::vector<int64_t>>& expert_load);

  Model& model_;
  ProcessGroups* groups_;  // the model's; null on one process
  const config::OptimConfig cfg_;
  int64_t max_steps_;
  AdamW adamw_;
  SparseAdam sparse_adam_;
  std::optional<GradientBuckets> buckets_;  // distributed only
  int64_t steps_done_ = 0;
};

}  // namespace engram
