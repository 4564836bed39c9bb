#pragma once
// Lazy row-sparse Adam for Engram tables (MODEL.md §6): LR × table_lr_mult, no weight decay, and
// only the rows that received gradient this step touch their moments and values. Bias correction
// uses the global step, so a row's correction does not depend on how often it was seen.
#include "optim/moments.h"

namespace engram {

class SparseAdam : public MomentOptimizer {
 public:
  SparseAdam(ParameterRegistry& params, const config::OptimConfig& cfg);
  // One update of every SparseTable parameter from its merged row grads (see merge_row_grads);
  // a table without row grads this step is left untouched. `step` is the 1-based global step.
  void step(float lr, float grad_scale, int64_t step);
};

}  // namespace engram
