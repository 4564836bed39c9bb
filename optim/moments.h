#pragma once
// What AdamW and SparseAdam share: the registry parameters one optimizer updates, their Adam
// moments (the optimizer state a checkpoint saves and restores) and the per-step hyperparameters.
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "kernels/adam.h"
#include "runtime/config/config.h"
#include "runtime/parameters.h"

namespace engram {

// First and second moments of one parameter, same local shape and device as its value.
struct MomentState {
  Tensor m, v;
};
using MomentMap = std::map<std::string, MomentState>;  // keyed by parameter name

class MomentOptimizer {
 public:
  const MomentMap& state() const { return state_; }
  MomentMap& mutable_state() { return state_; }  // checkpoint restore writes into m and v
  const std::vector<Parameter*>& parameters() const { return params_; }  // registry order

 protected:
  // Takes every registry parameter whose group is in `groups` and gives it zeroed moments.
  MomentOptimizer(ParameterRegistry& registry, const config::OptimConfig& cfg,
                  std::initializer_list<OptimGroup> groups);

  MomentState& moments(const Parameter& p);
  // Hyperparameters of one update: betas and eps from the config, the rest from the caller.
  kernels::AdamStep adam_step(float lr, float grad_scale, int64_t step, float weight_decay) const;

  const config::OptimConfig cfg_;

 private:
  std::vector<Parameter*> params_;
  MomentMap state_;
};

}  // namespace engram
