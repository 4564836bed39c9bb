#pragma once
// What a checkpoint holds of a model and its trainer, as host tensors by name, and the metrics of
// training steps, for tests that compare two runs bitwise (checkpoint and resume tests, on the CPU
// and on the GPU).
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "model/model.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace engram::testing_util {

// Parameters ("param <name>") and both optimizers' moments ("adamw.m <name>", ...), copied to the host.
inline std::map<std::string, Tensor> checkpoint_state(const Model& model, const Trainer& trainer) {
  std::map<std::string, Tensor> state;
  for (const Parameter* p : model.params().all()) state["param " + p->name] = p->value.copy_to(Device::CPU);
  for (const auto& [name, s] : trainer.adamw().state()) {
    state["adamw.m " + name] = s.m.copy_to(Device::CPU);
    state["adamw.v " + name] = s.v.copy_to(Device::CPU);
  }
  for (const auto& [name, s] : trainer.sparse_adam().state()) {
    state["sparse_adam.m " + name] = s.m.copy_to(Device::CPU);
    state["sparse_adam.v " + name] = s.v.copy_to(Device::CPU);
  }
  return state;
}

// The same step count and every checkpointed tensor bitwise equal.
inline void expect_same_checkpoint_state(const Model& model_a, const Trainer& trainer_a, const Model& model_b,
                                         const Trainer& trainer_b) {
  EXPECT_EQ(trainer_a.steps_done(), trainer_b.steps_done());
  const auto a = checkpoint_state(model_a, trainer_a), b = checkpoint_state(model_b, trainer_b);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(bitwise_equal(t, b.at(name))) << name;
}

inline bool same_double_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// The steps of a resumed run against the uninterrupted run's, from its step index `first` on: step
// numbers, losses and gradient norms bitwise, expert loads.
inline void expect_same_steps(const std::vector<StepMetrics>& resumed, const std::vector<StepMetrics>& uninterrupted,
                              size_t first) {
  ASSERT_LE(first + resumed.size(), uninterrupted.size());
  for (size_t i = 0; i < resumed.size(); ++i) {
    const StepMetrics &got = resumed[i], &want = uninterrupted[first + i];
    EXPECT_EQ(got.step, want.step);
    EXPECT_TRUE(same_double_bits(got.loss, want.loss)) << "step " << got.step;
    EXPECT_TRUE(same_double_bits(got.grad_norm, want.grad_norm)) << "step " << got.step;
    EXPECT_EQ(got.expert_load, want.expert_load);
  }
}

}  // namespace engram::testing_util
