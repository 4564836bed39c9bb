#include "sweep/sweep_plan.h"

#include <cmath>
#include <filesystem>

#include "model/plan.h"
#include "runtime/error.h"

namespace engram {

namespace {

// The budget in tokens at a point: given, or from FLOPs at 6 FLOPs per activated parameter and token.
double budget_tokens(const SweepConfig& cfg, const Allocation& a) {
  if (cfg.has_train_tokens()) return static_cast<double>(cfg.train_tokens());
  return cfg.train_flops() / (6.0 * static_cast<double>(a.activated_params));
}

SweepPoint plan_point(const Sweep& sweep, double rho, uint64_t seed) {
  const SweepConfig& s = sweep.config;
  SweepPoint p;
  p.rho = rho;
  p.seed = seed;
  p.target_total = s.total_params();
  p.allocation = allocate(sweep.base.model(), s.total_params(), rho, sweep.base.parallel().expert_parallel());
  p.run_dir = (std::filesystem::path(s.output_dir()) / point_dir_name(rho, seed)).string();

  const config::TrainConfig& t = sweep.base.train();
  const int64_t tokens_per_step = int64_t{t.global_batch_size()} * t.seq_len();
  p.steps = std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil(budget_tokens(s, p.allocation) / static_cast<double>(tokens_per_step))));
  p.tokens = p.steps * tokens_per_step;

  p.config = sweep.base;
  *p.config.mutable_model() = p.allocation.model;
  p.config.mutable_model()->set_seed(seed);
  p.config.mutable_data()->set_seed(seed);
  p.config.mutable_train()->set_max_steps(p.steps);
  p.config.mutable_train()->set_run_dir(p.run_dir);
  try {
    validate_config(p.config);
    const Plan plan = make_plan(p.config, {s.launcher().ranks(), p.config.parallel().expert_parallel()});
    p.flops = static_cast<double>(p.steps) * plan.flops.per_step;
    p.peak_bytes = plan.memory.total();
  } catch (const Error& e) {
    EG_FAIL("ρ = ", rho, ", seed ", seed, " (", p.steps, " steps): ", e.what());
  }
  return p;
}

}  // namespace

std::vector<SweepPoint> plan_sweep(const Sweep& sweep) {
  std::vector<SweepPoint> points;
  for (uint64_t seed : sweep.config.seeds())
    for (double rho : sweep.config.rho()) points.push_back(plan_point(sweep, rho, seed));
  return points;
}

}  // namespace engram
