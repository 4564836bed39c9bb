#include "optim/moments.h"

#include <algorithm>

namespace engram {

MomentOptimizer::MomentOptimizer(ParameterRegistry& registry, const config::OptimConfig& cfg,
                                 std::initializer_list<OptimGroup> groups)
    : cfg_(cfg) {
  for (Parameter* p : registry.all()) {
    if (std::find(groups.begin(), groups.end(), p->group) == groups.end()) continue;
    const Tensor& value = p->value;
    params_.push_back(p);
    state_[p->name] = MomentState{Tensor::zeros(value.shape(), DType::F32, value.device()),
                                  Tensor::zeros(value.shape(), DType::F32, value.device())};
  }
}

MomentState& MomentOptimizer::moments(const Parameter& p) {
  auto it = state_.find(p.name);
  EG_ASSERT(it != state_.end(), "no optimizer state for ", p.name);
  return it->second;
}

kernels::AdamStep MomentOptimizer::adam_step(float lr, float grad_scale, int64_t step, float weight_decay) const {
  EG_ASSERT(step >= 1, "Adam step is 1-based, got ", step);
  kernels::AdamStep s;
  s.lr = lr;
  s.beta1 = cfg_.beta1();
  s.beta2 = cfg_.beta2();
  s.eps = cfg_.eps();
  s.weight_decay = weight_decay;
  s.step = step;
  s.grad_scale = grad_scale;
  return s;
}

}  // namespace engram
