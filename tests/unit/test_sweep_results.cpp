// What a sweep reads from a run's metrics.jsonl and reports as a point's memory (sweep/results.h):
// both peaks come from the last evaluation line (not a training line, not an earlier evaluation);
// peak_memory_bytes is the GPU's for a CUDA point and the host's for a CPU one, memory_device says
// which, right after it in the row; a peak the line lacks is unset (-1, null in the row).
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/atomic_file.h"
#include "sweep/results.h"
#include "tests/test_util.h"

namespace engram {
namespace {

SweepPoint point_on(config::ComputeDevice device) {
  SweepPoint p;
  p.config.mutable_runtime()->set_device(device);
  return p;
}

class SweepResults : public ::testing::Test {
 protected:
  std::string write_metrics(const std::string& lines) const {
    const std::string path = (dir_.path() / "metrics.jsonl").string();
    write_file_atomic(path, lines);
    return path;
  }

  testing_util::ScopedTempDir dir_{"test_sweep_results"};
};

// Lines as a CUDA run writes them: every training line has the device peak so far.
const char* const kCudaMetrics =
    R"({"type":"train","step":1,"loss":5.5,"peak_device_bytes":700}
{"type":"eval","step":1,"val_loss":5.25,"peak_host_bytes":1000,"peak_device_bytes":800}
{"type":"train","step":2,"loss":4.5,"peak_device_bytes":900}
{"type":"eval","step":2,"val_loss":4.25,"peak_host_bytes":3000,"peak_device_bytes":4000}
)";

TEST_F(SweepResults, ReadsBothPeaksOfTheLastEvaluationLine) {
  const FinalMetrics m = read_final_metrics(write_metrics(kCudaMetrics));
  EXPECT_EQ(m.train_step, 2);
  EXPECT_EQ(m.train_loss, 4.5);
  EXPECT_EQ(m.eval_step, 2);
  EXPECT_EQ(m.val_loss, 4.25);
  EXPECT_EQ(m.peak_host_bytes, 3000);
  EXPECT_EQ(m.peak_device_bytes, 4000);
}

TEST_F(SweepResults, PeakMemoryIsThatOfTheDeviceThePointTrainsOn) {
  const FinalMetrics m = read_final_metrics(write_metrics(kCudaMetrics));
  const SweepPoint cuda = point_on(config::CUDA), cpu = point_on(config::CPU);
  EXPECT_EQ(peak_memory_bytes(cuda, m), 4000);
  EXPECT_EQ(peak_memory_bytes(cpu, m), 3000);
  EXPECT_STREQ(memory_device(cuda), "cuda");
  EXPECT_STREQ(memory_device(cpu), "cpu");

  // The row: memory_device right after peak_memory_bytes.
  PointOutcome o;
  o.status = PointStatus::Finished;
  o.peak_memory_bytes = peak_memory_bytes(cuda, m);
  const nlohmann::ordered_json row = result_row(cuda, o);
  std::vector<std::string> keys;
  for (const auto& item : row.items()) keys.push_back(item.key());
  const auto peak = std::find(keys.begin(), keys.end(), "peak_memory_bytes");
  ASSERT_NE(peak, keys.end());
  ASSERT_NE(peak + 1, keys.end());
  EXPECT_EQ(*(peak + 1), "memory_device");
  EXPECT_EQ(row["peak_memory_bytes"], 4000);
  EXPECT_EQ(row["memory_device"], "cuda");
  EXPECT_EQ(result_row(cpu, o)["memory_device"], "cpu");
}

TEST_F(SweepResults, PeaksTheEvaluationLineLacksAreUnset) {
  const FinalMetrics m = read_final_metrics(write_metrics(
      R"({"type":"eval","step":2,"val_loss":4.25,"peak_host_bytes":3000,"peak_device_bytes":4000}
{"type":"eval","step":3,"val_loss":4.0}
)"));
  EXPECT_EQ(m.eval_step, 3);
  EXPECT_EQ(m.peak_host_bytes, -1);
  EXPECT_EQ(m.peak_device_bytes, -1);
  EXPECT_EQ(peak_memory_bytes(point_on(config::CUDA), m), -1);
  EXPECT_EQ(peak_memory_bytes(point_on(config::CPU), m), -1);

  PointOutcome o;
  o.peak_memory_bytes = peak_memory_bytes(point_on(config::CPU), m);
  EXPECT_TRUE(result_row(point_on(config::CPU), o)["peak_memory_bytes"].is_null());

  // A CPU run's line: the device peak is 0, the host's is what the point reports.
  const FinalMetrics on_cpu = read_final_metrics(write_metrics(
      R"({"type":"eval","step":1,"val_loss":5.0,"peak_host_bytes":2500,"peak_device_bytes":0}
)"));
  EXPECT_EQ(on_cpu.peak_device_bytes, 0);
  EXPECT_EQ(peak_memory_bytes(point_on(config::CPU), on_cpu), 2500);
}

}  // namespace
}  // namespace engram
