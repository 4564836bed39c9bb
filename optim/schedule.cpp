#include "optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "runtime/error.h"

namespace engram {

float learning_rate(const config::OptimConfig& cfg, int64_t step, int64_t max_steps) {
  EG_ASSERT(step >= 0, "learning_rate step ", step);
  const double lr = cfg.lr(), min_lr = cfg.min_lr();
  const int64_t warmup = cfg.warmup_steps();
  if (step < warmup) return static_cast<float>(lr * static_cast<double>(step + 1) / static_cast<double>(warmup));
  const double span = static_cast<double>(std::max<int64_t>(1, max_steps - warmup));
  const double progress = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
  return static_cast<float>(min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace engram
