#pragma once
// One optimizer step over a global batch (MODEL.md §2, §6): gradient accumulation over the
// micro-batches, global-norm clipping, AdamW + row-sparse Adam, and the MoE balancing-bias update.
// The phases are separate so that data-parallel training can insert its gradient all-reduce
// between backward and the norm.
#include <cstdint>
#include <vector>

#include "model/model.h"
#include "optim/adamw.h"
#include "optim/sparse_adam.h"
#include "runtime/config/config.h"

namespace engram {

struct StepMetrics {
  int64_t step = 0;                               // optimizer steps done after this one (1 for the first)
  double loss = 0.0;                              // cross-entropy mean over the global batch's targets
  double aux_loss = 0.0;                          // MoE auxiliary loss, its share of the objective
  double z_loss = 0.0;                            // router z-loss, its share of the objective
  float lr = 0.0f;                                // learning rate of this update
  double grad_norm = 0.0;                         // global L2 gradient norm before clipping
  std::vector<std::vector<int64_t>> expert_load;  // per MoE layer, summed over micro-batches
  std::vector<double> engram_gate_mean;           // per Engram layer, mean over micro-batches
  int64_t tokens = 0;                             // targets in the global batch
};

class Trainer {
 public:
  Trainer(Model& model, const config::OptimConfig& cfg, int64_t max_steps);

  // One optimizer step over `micro_batches`, the whole global batch of this (single) rank.
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
  // Combines what the micro-batches left per parameter (table row grads merged row by row).
  void reduce_gradients();
  void apply_updates(float lr, float grad_scale);
  void update_balancing_biases(const std::vector<std::vector<int64_t>>& expert_load);

  Model& model_;
  const config::OptimConfig cfg_;
  int64_t max_steps_;
  AdamW adamw_;
  SparseAdam sparse_adam_;
  int64_t steps_done_ = 0;
};

}  // namespace engram
