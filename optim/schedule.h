#pragma once
// Learning-rate schedule (MODEL.md §6): linear warmup to `lr`, then cosine decay to `min_lr`.
#include <cstdint>

#include "runtime/config/config.h"

namespace engram {

// LR for the update that follows `step` completed optimizer steps (0 for the first update):
// lr·(step+1)/warmup_steps during warmup, then min_lr + ½(lr − min_lr)(1 + cos(π·progress)) with
// progress = (step − warmup) / max(1, max_steps − warmup) clamped to [0, 1].
float learning_rate(const config::OptimConfig& cfg, int64_t step, int64_t max_steps);

}  // namespace engram
