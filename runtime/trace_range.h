#pragma once
// A named range on the profiler's timeline for one scope: NVTX in CUDA builds (Nsight Systems shows
// the ranges of every module's forward and backward, the head, the optimizer, the gradient
// reduction and every collective; see docs/PROFILING.md), nothing otherwise. Without a profiler
// attached NVTX calls return at once.
//
// Phase timing (off by default; the step benchmark turns it on): each outermost range (one opened
// while no other is open on its thread) also adds its wall time to a total per phase, the name
// without its "layers.<l>." prefix ("attn forward", "optimizer", ...); nested ranges (a collective
// inside a module's forward) are on the timeline only, so no time is counted twice. In CUDA builds a
// timed range waits for the device at both ends, so the times are the GPU's, at the cost of those
// waits.
#include <map>
#include <string>

namespace engram {

class TraceRange {
 public:
  // `name` must outlive the range: a string literal, or a string its owner keeps (made once, not per
  // call, so that ranges on hot paths cost no allocation).
  explicit TraceRange(const char* name);
  ~TraceRange();
  TraceRange(const TraceRange&) = delete;
  TraceRange& operator=(const TraceRange&) = delete;

 private:
  const char* name_;
  double start_seconds_ = 0.0;  // set when phase timing is on
};

void set_phase_timing(bool on);
std::map<std::string, double> phase_seconds();  // totals since the last reset
void reset_phase_seconds();

}  // namespace engram
