#include "sweep/report.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "train/checkpoint.h"

namespace engram {

namespace {

namespace fs = std::filesystem;

// "5.4321", or "-" when not measured.
std::string value_or_dash(double value, const char* format) {
  if (std::isnan(value)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

std::string budget_text(const SweepConfig& s) {
  char buf[96];
  if (s.has_train_tokens())
    std::snprintf(buf, sizeof buf, "%" PRId64 " tokens per point", s.train_tokens());
  else
    std::snprintf(buf, sizeof buf, "%.3e FLOPs per point (tokens = FLOPs / (6 P_act))", s.train_flops());
  return buf;
}

}  // namespace

std::string point_state(const SweepPoint& point) {
  if (fs::exists(result_marker_path(point.run_dir))) return "finished";
  if (has_checkpoint(point.run_dir)) return "resume";
  return "new";
}

void print_plan(const std::string& config_path, const Sweep& sweep, const std::vector<SweepPoint>& points) {
  const SweepConfig& s = sweep.config;
  const SparseBudget b = sparse_budget(sweep.base.model(), s.total_params());
  const config::TrainConfig& t = sweep.base.train();
  std::printf("engram-sweep --dry-run: %s (base %s)\n", config_path.c_str(), s.base_config().c_str());
  std::printf("  P_tot target %" PRId64 " = fixed %" PRId64 " (base model without inactive experts and tables)"
              " + P_sparse %" PRId64 "\n",
              s.total_params(), b.fixed, b.sparse);
  std::printf("  one routed expert (all MoE layers, router row included): %" PRId64 " parameters\n", b.per_expert);
  std::printf("  budget: %s; %d x %d = %" PRId64 " tokens per step\n", budget_text(s).c_str(),
              t.global_batch_size(), t.seq_len(), int64_t{t.global_batch_size()} * t.seq_len());
  const bool cuda = sweep.base.runtime().device() == config::CUDA;
  std::printf("  memory: peak_GiB = engram-plan's peak per rank (%d rank%s a run) %s\n", s.launcher().ranks(),
              s.launcher().ranks() == 1 ? "" : "s", cuda ? "on its GPU" : "in host memory (runtime.device CPU)");
  std::printf("  output: %s/rho_<ρ>_seed_<seed>/\n\n", s.output_dir().c_str());
  std::printf("%6s %6s %5s %11s %12s %12s %8s %11s %7s %11s %10s %8s  %s\n", "rho", "seed", "E", "table_rows", "P_tot",
              "target", "error", "P_act", "steps", "tokens", "FLOPs", "peak_GiB", "state");
  for (const SweepPoint& p : points) {
    const Allocation& a = p.allocation;
    std::printf("%6.3f %6" PRIu64 " %5" PRId64 " %11" PRId64 " %12" PRId64 " %12" PRId64 " %+7.3f%% %11" PRId64
                " %7" PRId64 " %11" PRId64 " %10.3e %8.2f  %s\n",
                p.rho, p.seed, a.routed_experts, a.table_rows, a.total_params, p.target_total, 100.0 * a.relative_error,
                a.activated_params, p.steps, p.tokens, p.flops, static_cast<double>(p.peak_bytes) / (1 << 30),
                point_state(p).c_str());
  }
  std::printf("\nnothing trained (--dry-run)\n");
}

void print_summary(const Sweep& sweep, const std::vector<SweepPoint>& points,
                   const std::vector<PointOutcome>& outcomes, const SweepFit& fit, const std::string& png) {
  const SweepConfig& s = sweep.config;
  std::printf("\nsweep summary: P_tot target %" PRId64 ", %s\n", s.total_params(), budget_text(s).c_str());
  std::printf("%6s %6s %5s %11s %12s %12s %8s %9s %8s %9s  %s\n", "rho", "seed", "E", "table_rows", "P_tot",
              "target", "error", "val_loss", "bpb", "wall_s", "status");
  for (size_t i = 0; i < points.size(); ++i) {
    const SweepPoint& p = points[i];
    const PointOutcome& o = outcomes[i];
    std::printf("%6.3f %6" PRIu64 " %5" PRId64 " %11" PRId64 " %12" PRId64 " %12" PRId64 " %+7.3f%% %9s %8s %9s  %s\n",
                p.rho, p.seed, p.allocation.routed_experts, p.allocation.table_rows, p.allocation.total_params,
                p.target_total, 100.0 * p.allocation.relative_error, value_or_dash(o.val_loss, "%.4f").c_str(),
                value_or_dash(o.heldout_bits_per_byte, "%.4f").c_str(), value_or_dash(o.wall_seconds, "%.1f").c_str(),
                status_name(o.status));
  }
  if (fit.fit) {
    const QuadraticFit& q = *fit.fit;
    std::printf("fit: loss = %.5g rho^2 %+.5g rho %+.5g over %d observations at %d rho values\n", q.a, q.b, q.c,
                fit.observations, fit.distinct_rho);
    std::printf("  rho* = %.3f (%s), loss there %.4f, residual rms %.4g\n", q.rho_star,
                q.interior_minimum ? "interior minimum" : "no interior minimum: the better end of the range",
                q.loss_star, q.residual_rms);
  } else {
    std::printf("fit: none yet (needs finished points at 3 rho values, has %d)\n", fit.distinct_rho);
  }
  const std::string dir = s.output_dir();
  std::printf("files: %s/results.csv, results.jsonl%s%s; run directories %s/rho_*_seed_*/\n", dir.c_str(),
              fit.fit ? ", fit.json" : "", fit.observations > 0 ? ", plot.svg" : "", dir.c_str());
  std::printf("plot.png: %s\n", png.c_str());
}

}  // namespace engram
