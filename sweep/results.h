#pragma once
// What a sweep writes (docs/SWEEP.md): each finished run's result marker, results.csv and
// results.jsonl (one row per point), fit.json and plot.svg / plot.png; and what it reads back from a
// run directory (the result marker, metrics.jsonl, engram-eval's JSON).
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sweep/fit.h"
#include "sweep/sweep_plan.h"

namespace engram {

enum class PointStatus { Pending, Finished, Failed };
const char* status_name(PointStatus status);

constexpr double kNotMeasured = std::numeric_limits<double>::quiet_NaN();

// The measured side of a point (the planned side is its SweepPoint).
struct PointOutcome {
  PointStatus status = PointStatus::Pending;
  double final_train_loss = kNotMeasured;       // the last training step's loss
  double val_loss = kNotMeasured;               // the last evaluation (at the final step)
  double heldout_bits_per_byte = kNotMeasured;  // engram-eval on heldout_text; unset: not measured
  double wall_seconds = kNotMeasured;           // training and evaluation, in the session that finished it
  int64_t peak_memory_bytes = -1;               // peak bytes of rank 0's caching allocator on memory_device
  std::string error;                            // why a failed point failed
};

// The device a point trains on (runtime.device), whose memory its peak_memory_bytes measures and on
// which its held-out evaluation runs: "cuda" (the GPU) or "cpu" (the host).
const char* memory_device(const SweepPoint& point);

// One row: planned and measured columns in the order of results.csv (unmeasured values null).
nlohmann::ordered_json result_row(const SweepPoint& point, const PointOutcome& outcome);

// <run_dir>/result.json: the row of a finished point, written atomically after everything else, so
// its presence means "finished". read_result_marker: nullopt when absent; an unreadable one is an
// error naming the file.
std::string result_marker_path(const std::string& run_dir);
void write_result_marker(const SweepPoint& point, const PointOutcome& outcome);
std::optional<PointOutcome> read_result_marker(const std::string& run_dir);

// The end of a run's metrics.jsonl: the last training line and the last evaluation line.
struct FinalMetrics {
  int64_t train_step = 0;  // 0: no training line
  double train_loss = kNotMeasured;
  int64_t eval_step = 0;  // 0: no evaluation line
  double val_loss = kNotMeasured;
  int64_t peak_host_bytes = -1;    // of the last evaluation line; -1: not in it
  int64_t peak_device_bytes = -1;  // likewise; 0 on the CPU
};
FinalMetrics read_final_metrics(const std::string& metrics_path);

// The point's peak_memory_bytes: peak_device_bytes when it trains on CUDA, peak_host_bytes otherwise.
int64_t peak_memory_bytes(const SweepPoint& point, const FinalMetrics& metrics);

// bits_per_byte from engram-eval's JSON output file; errors name the file.
double read_bits_per_byte(const std::string& eval_json_path);

// results.csv and results.jsonl in `output_dir`, rows in plan order, written atomically.
void write_results_tables(const std::string& output_dir, const std::vector<SweepPoint>& points,
                          const std::vector<PointOutcome>& outcomes);

// The fit of validation loss against ρ over the finished points (every seed one observation).
struct SweepFit {
  int observations = 0;
  int distinct_rho = 0;
  std::optional<QuadraticFit> fit;  // needs 3 distinct ρ values
};
SweepFit fit_finished(const std::vector<SweepPoint>& points, const std::vector<PointOutcome>& outcomes);

// fit.json (removed when there is no fit, so that none from an earlier session stays) and plot.svg
// (mean and sample standard deviation over seeds at each ρ; not written before a point has finished).
void write_fit_and_plot(const std::string& output_dir, const std::vector<SweepPoint>& points,
                        const std::vector<PointOutcome>& outcomes, const SweepFit& fit,
                        const std::string& title);

// plot.png from plot.svg with rsvg-convert, or ImageMagick's convert, when one is on PATH. Returns
// what happened, for the summary ("written with rsvg-convert", "skipped: ...", "failed: ...").
std::string convert_plot_to_png(const std::string& output_dir);

}  // namespace engram
