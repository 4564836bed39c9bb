#pragma once
// Running a sweep (engram-sweep without --dry-run; docs/SWEEP.md): one run directory per point, a
// point finished when its result marker exists (skipped when the sweep runs again), an unfinished one
// resumed from its checkpoint or started afresh; results, fit and plot rewritten after every point.
#include <string>
#include <vector>

#include "sweep/sweep_plan.h"

namespace engram {

struct SweepRunOptions {
  std::string config_path;  // the sweep config, named in messages
  std::string bin_dir;      // engram-train and engram-eval live here (beside engram-sweep)
};

// Trains every point that is not finished: in-process one after another, or with launcher.command
// as up to launcher.max_parallel child processes. A point that fails (an error, a command's non-zero
// exit) is recorded as failed and the others go on; after the summary, engram::Error names the failed
// points. SIGINT / SIGTERM stop the sweep: runs in flight save a checkpoint, no new one starts, and
// the function returns normally after writing the results.
void run_sweep(const Sweep& sweep, const std::vector<SweepPoint>& points, const SweepRunOptions& options);

}  // namespace engram
