// Learning-rate schedule: warmup, peak, cosine midpoint and floor, against values worked out by hand.
#include <gtest/gtest.h>

#include "optim/schedule.h"

namespace engram {
namespace {

config::OptimConfig schedule_config(int warmup) {
  config::OptimConfig cfg;
  cfg.set_lr(1e-3f);
  cfg.set_min_lr(1e-4f);
  cfg.set_warmup_steps(warmup);
  return cfg;
}

TEST(LearningRate, LinearWarmupReachesThePeak) {
  const config::OptimConfig cfg = schedule_config(10);
  EXPECT_FLOAT_EQ(learning_rate(cfg, 0, 110), 1e-4f);  // 1e-3 · 1/10
  EXPECT_FLOAT_EQ(learning_rate(cfg, 4, 110), 5e-4f);  // 1e-3 · 5/10
  EXPECT_FLOAT_EQ(learning_rate(cfg, 9, 110), 1e-3f);  // last warmup step: the peak
  EXPECT_FLOAT_EQ(learning_rate(cfg, 10, 110), 1e-3f);  // cosine progress 0
}

TEST(LearningRate, CosineDecayToMinLr) {
  const config::OptimConfig cfg = schedule_config(10);
  // progress = (step − 10) / 100
  EXPECT_FLOAT_EQ(learning_rate(cfg, 60, 110), 5.5e-4f);  // progress ½: (lr + min_lr) / 2
  // progress ¼: min_lr + ½(lr − min_lr)(1 + cos(π/4)) = 1e-4 + 4.5e-4 · (1 + √2/2)
  EXPECT_FLOAT_EQ(learning_rate(cfg, 35, 110), 1e-4f + 4.5e-4f * (1.0f + 0.70710678f));
  EXPECT_FLOAT_EQ(learning_rate(cfg, 110, 110), 1e-4f);  // at max_steps
  EXPECT_FLOAT_EQ(learning_rate(cfg, 500, 110), 1e-4f);  // after max_steps: stays at min_lr
  float previous = learning_rate(cfg, 10, 110);
  for (int64_t step = 11; step <= 120; ++step) {
    const float lr = learning_rate(cfg, step, 110);
    EXPECT_LE(lr, previous) << "step " << step;
    previous = lr;
  }
}

TEST(LearningRate, NoWarmupStartsAtThePeak) {
  const config::OptimConfig cfg = schedule_config(0);
  EXPECT_FLOAT_EQ(learning_rate(cfg, 0, 100), 1e-3f);
  EXPECT_FLOAT_EQ(learning_rate(cfg, 50, 100), 5.5e-4f);
  EXPECT_FLOAT_EQ(learning_rate(cfg, 100, 100), 1e-4f);
}

TEST(LearningRate, MaxStepsWithinWarmupDoesNotDivideByZero) {
  const config::OptimConfig cfg = schedule_config(10);
  EXPECT_FLOAT_EQ(learning_rate(cfg, 10, 5), 1e-3f);  // progress 0 / max(1, −5)
  EXPECT_FLOAT_EQ(learning_rate(cfg, 11, 5), 1e-4f);  // progress clamped to 1
}

}  // namespace
}  // namespace engram
