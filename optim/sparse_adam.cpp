#include "optim/sparse_adam.h"

namespace engram {

SparseAdam::SparseAdam(ParameterRegistry& params, const config::OptimConfig& cfg)
    : MomentOptimizer(params, cfg, {OptimGroup::SparseTable}) {}

void SparseAdam::step(float lr, float grad_scale, int64_t step) {
  const kernels::AdamStep s = adam_step(lr * cfg_.table_lr_mult(), grad_scale, step, 0.0f);
  for (Parameter* p : parameters()) {
    EG_ASSERT(p->row_grads.size() <= 1, p->name, " has ", p->row_grads.size(),
              " row-grad entries; call merge_row_grads before SparseAdam::step");
    if (p->row_grads.empty()) continue;
    const RowGrads& g = p->row_grads.front();
    MomentState& state = moments(*p);
    kernels::sparse_adam_update(p->value, g.rows, g.values, state.m, state.v, s);
  }
}

}  // namespace engram
