#pragma once
// Every run of a sweep, planned before any is started (engram-sweep --dry-run prints this plan).
#include <cstdint>
#include <string>
#include <vector>

#include "sweep/allocation.h"
#include "sweep/sweep_config.h"

namespace engram {

struct SweepPoint {
  double rho = 0.0;
  uint64_t seed = 0;
  int64_t target_total = 0;  // total_params of the sweep
  Allocation allocation;    // allocate(base model, total_params, ρ, base parallel.expert_parallel)
  ExperimentConfig config;  // validated: the allocated model, model.seed = data.seed = seed,
                            // train.max_steps = steps, train.run_dir = run_dir
  std::string run_dir;      // <output_dir>/rho_<ρ, 3 decimals>_seed_<seed>
  int64_t steps = 0;        // ceil(budget tokens / (global_batch_size · seq_len))
  int64_t tokens = 0;       // steps · global_batch_size · seq_len: the tokens actually trained on
  double flops = 0.0;       // steps · the planner's FLOPs per step (model/plan.h FlopEstimate)
  int64_t peak_bytes = 0;   // the planner's memory per rank on the run's device (MemoryEstimate::total)
};

// Seed-major (every ρ of the first seed, then the next seed), ρ ascending: a partial sweep has
// whole curves. The token budget is train_tokens, or train_flops / (6 · P_act) with P_act the
// point's activated parameters. Errors name the point (ρ, seed) and the rule broken.
std::vector<SweepPoint> plan_sweep(const Sweep& sweep);

}  // namespace engram
