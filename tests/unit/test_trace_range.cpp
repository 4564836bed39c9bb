// Phase timing of TraceRange: only outermost ranges add time, under the name without its
// "layers.<l>." prefix; a range nested in another (a collective inside a module's forward) adds
// nothing, so no time is counted twice; with timing off nothing is recorded.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "runtime/trace_range.h"

namespace engram {
namespace {

void busy_for(std::chrono::milliseconds ms) { std::this_thread::sleep_for(ms); }

TEST(TraceRange, OnlyOutermostRangesAreTimedPhases) {
  set_phase_timing(true);
  reset_phase_seconds();
  {
    const TraceRange outer("layers.3.ffn forward");
    busy_for(std::chrono::milliseconds(20));
    const TraceRange inner("all_to_all_v");
    busy_for(std::chrono::milliseconds(20));
  }
  std::map<std::string, double> phases = phase_seconds();
  ASSERT_EQ(phases.size(), 1u);
  EXPECT_GE(phases["ffn forward"], 0.04);  // the nested range's time is inside the outer one's
  {
    const TraceRange alone("all_to_all_v");
    busy_for(std::chrono::milliseconds(5));
  }
  phases = phase_seconds();
  EXPECT_EQ(phases.size(), 2u);
  EXPECT_GE(phases["all_to_all_v"], 0.005);

  set_phase_timing(false);
  reset_phase_seconds();
  { const TraceRange untimed("optimizer"); }
  EXPECT_TRUE(phase_seconds().empty());
}

}  // namespace
}  // namespace engram
