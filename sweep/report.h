#pragma once
// What engram-sweep prints on stdout: the plan (--dry-run) and the one-screen summary at the end.
#include <string>
#include <vector>

#include "sweep/results.h"
#include "sweep/sweep_plan.h"

namespace engram {

// Where a point stands before the sweep runs it: "finished", "resume" (a checkpoint), "new".
std::string point_state(const SweepPoint& point);

// The allocation of every point with its planned steps, tokens and FLOPs.
void print_plan(const std::string& config_path, const Sweep& sweep, const std::vector<SweepPoint>& points);

// The points with their results, the fit and where the files are. `png` says what became of plot.png.
void print_summary(const Sweep& sweep, const std::vector<SweepPoint>& points,
                   const std::vector<PointOutcome>& outcomes, const SweepFit& fit, const std::string& png);

}  // namespace engram
