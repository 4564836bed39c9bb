#pragma once
// AdamW for the dense parameters (MODEL.md §6): decoupled weight decay `cfg.weight_decay` on the
// Decay group (weight matrices), none on NoDecay (norm gains, biases, conv weights).
#include "optim/moments.h"

namespace engram {

class AdamW : public MomentOptimizer {
 public:
  AdamW(ParameterRegistry& params, const config::OptimConfig& cfg);
  // One update of every Decay and NoDecay parameter from its dense grad. `step` is the 1-based
  // global optimizer step (bias correction); `grad_scale` multiplies every gradient (clipping).
  void step(float lr, float grad_scale, int64_t step);
};

}  // namespace engram
