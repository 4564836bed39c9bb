#include "optim/adamw.h"

namespace engram {

AdamW::AdamW(ParameterRegistry& params, const config::OptimConfig& cfg)
    : MomentOptimizer(params, cfg, {OptimGroup::Decay, OptimGroup::NoDecay}) {}

void AdamW::step(float lr, float grad_scale, int64_t step) {
  for (Parameter* p : parameters()) {
    const float decay = p->group == OptimGroup::Decay ? cfg_.weight_decay() : 0.0f;
    MomentState& s = moments(*p);
    kernels::adamw_update(p->value, p->grad, s.m, s.v, adam_step(lr, grad_scale, step, decay));
  }
}

}  // namespace engram
