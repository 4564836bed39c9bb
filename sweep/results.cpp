#include "sweep/results.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>

#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "sweep/child_process.h"
#include "sweep/svg_plot.h"

namespace engram {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

json measured(double value) { return std::isnan(value) ? json(nullptr) : json(value); }
json measured_bytes(int64_t value) { return value < 0 ? json(nullptr) : json(value); }

double number_or_nan(const json& row, const char* key, const std::string& path) {
  EG_CHECK(row.contains(key) && (row[key].is_null() || row[key].is_number()), path, ": \"", key,
           "\" missing or not a number");
  return row[key].is_null() ? kNotMeasured : row[key].get<double>();
}

// A byte count of a metrics.jsonl line; -1 when the line has none.
int64_t bytes_or_unset(const json& line, const char* key) {
  return line.contains(key) && line[key].is_number_integer() ? line[key].get<int64_t>() : -1;
}

bool trains_on_cuda(const SweepPoint& p) { return p.config.runtime().device() == config::CUDA; }

// One CSV cell: numbers as JSON writes them (shortest exact form), null empty, text quoted when needed.
std::string csv_cell(const json& value) {
  if (value.is_null()) return "";
  if (!value.is_string()) return value.dump();
  const std::string text = value.get<std::string>();
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace

const char* status_name(PointStatus status) {
  switch (status) {
    case PointStatus::Pending: return "pending";
    case PointStatus::Finished: return "finished";
    case PointStatus::Failed: return "failed";
  }
  return "?";
}

const char* memory_device(const SweepPoint& point) { return trains_on_cuda(point) ? "cuda" : "cpu"; }

ordered_json result_row(const SweepPoint& p, const PointOutcome& o) {
  const Allocation& a = p.allocation;
  ordered_json row;
  row["rho"] = p.rho;
  row["seed"] = p.seed;
  row["status"] = status_name(o.status);
  row["routed_experts"] = a.routed_experts;
  row["table_rows"] = a.table_rows;
  row["total_params_target"] = p.target_total;
  row["total_params"] = a.total_params;
  row["total_params_error"] = a.relative_error;
  row["activated_params"] = a.activated_params;
  row["steps"] = p.steps;
  row["tokens"] = p.tokens;
  row["flops"] = p.flops;
  row["final_train_loss"] = measured(o.final_train_loss);
  row["val_loss"] = measured(o.val_loss);
  row["heldout_bits_per_byte"] = measured(o.heldout_bits_per_byte);
  row["wall_seconds"] = measured(o.wall_seconds);
  row["peak_memory_bytes"] = measured_bytes(o.peak_memory_bytes);
  row["memory_device"] = memory_device(p);
  row["run_dir"] = p.run_dir;
  row["error"] = o.error.empty() ? json(nullptr) : json(o.error);
  return row;
}

std::string result_marker_path(const std::string& run_dir) { return join(run_dir, "result.json"); }

void write_result_marker(const SweepPoint& point, const PointOutcome& outcome) {
  EG_ASSERT(outcome.status == PointStatus::Finished, "only a finished point has a result marker");
  write_file_atomic(result_marker_path(point.run_dir), result_row(point, outcome).dump(2) + "\n");
}

std::optional<PointOutcome> read_result_marker(const std::string& run_dir) {
  const std::string path = result_marker_path(run_dir);
  if (!fs::exists(path)) return std::nullopt;
  const json row = json::parse(read_file(path), nullptr, /*allow_exceptions=*/false);
  EG_CHECK(row.is_object(), path, ": not a JSON object (a sweep's result marker; remove it to rerun the point)");
  PointOutcome o;
  o.status = PointStatus::Finished;
  o.final_train_loss = number_or_nan(row, "final_train_loss", path);
  o.val_loss = number_or_nan(row, "val_loss", path);
  o.heldout_bits_per_byte = number_or_nan(row, "heldout_bits_per_byte", path);
  o.wall_seconds = number_or_nan(row, "wall_seconds", path);
  const double peak = number_or_nan(row, "peak_memory_bytes", path);
  o.peak_memory_bytes = std::isnan(peak) ? -1 : static_cast<int64_t>(peak);
  return o;
}

FinalMetrics read_final_metrics(const std::string& metrics_path) {
  FinalMetrics f;
  if (!fs::exists(metrics_path)) return f;
  std::istringstream in(read_file(metrics_path));
  for (std::string line; std::getline(in, line);) {
    const json m = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object() || !m.contains("type") || !m.contains("step")) continue;  // e.g. a half-written line
    if (m["type"] == "train") {
      f.train_step = m["step"].get<int64_t>();
      f.train_loss = m["loss"].get<double>();
    } else if (m["type"] == "eval") {
      f.eval_step = m["step"].get<int64_t>();
      f.val_loss = m["val_loss"].get<double>();
      f.peak_host_bytes = bytes_or_unset(m, "peak_host_bytes");
      f.peak_device_bytes = bytes_or_unset(m, "peak_device_bytes");
    }
  }
  return f;
}

int64_t peak_memory_bytes(const SweepPoint& point, const FinalMetrics& metrics) {
  return trains_on_cuda(point) ? metrics.peak_device_bytes : metrics.peak_host_bytes;
}

double read_bits_per_byte(const std::string& eval_json_path) {
  const json r = json::parse(read_file(eval_json_path), nullptr, /*allow_exceptions=*/false);
  EG_CHECK(r.is_object() && r.contains("bits_per_byte") && r["bits_per_byte"].is_number(), eval_json_path,
           ": no bits_per_byte in engram-eval's output");
  return r["bits_per_byte"].get<double>();
}

void write_results_tables(const std::string& output_dir, const std::vector<SweepPoint>& points,
                          const std::vector<PointOutcome>& outcomes) {
  std::string csv, jsonl;
  for (size_t i = 0; i < points.size(); ++i) {
    const ordered_json row = result_row(points[i], outcomes[i]);
    std::string header, line;
    for (const auto& [key, value] : row.items()) {
      const char* comma = header.empty() ? "" : ",";
      header += comma + key;
      line += comma + csv_cell(value);
    }
    if (i == 0) csv += header + "\n";
    csv += line + "\n";
    jsonl += row.dump() + "\n";
  }
  write_file_atomic(join(output_dir, "results.csv"), csv);
  write_file_atomic(join(output_dir, "results.jsonl"), jsonl);
}

SweepFit fit_finished(const std::vector<SweepPoint>& points, const std::vector<PointOutcome>& outcomes) {
  std::vector<double> rho, loss;
  std::map<double, int> per_rho;
  for (size_t i = 0; i < points.size(); ++i) {
    if (outcomes[i].status != PointStatus::Finished) continue;
    rho.push_back(points[i].rho);
    loss.push_back(outcomes[i].val_loss);
    ++per_rho[points[i].rho];
  }
  SweepFit f;
  f.observations = static_cast<int>(rho.size());
  f.distinct_rho = static_cast<int>(per_rho.size());
  if (f.distinct_rho >= 3) f.fit = fit_quadratic(rho, loss);
  return f;
}

void write_fit_and_plot(const std::string& output_dir, const std::vector<SweepPoint>& points,
                        const std::vector<PointOutcome>& outcomes, const SweepFit& fit,
                        const std::string& title) {
  const std::string fit_path = join(output_dir, "fit.json");
  if (fit.fit) {
    const QuadraticFit& q = *fit.fit;
    ordered_json j;
    j["observations"] = fit.observations;
    j["distinct_rho"] = fit.distinct_rho;
    j["a"] = q.a;
    j["b"] = q.b;
    j["c"] = q.c;
    j["rho_star"] = q.rho_star;
    j["loss_star"] = q.loss_star;
    j["residual_rms"] = q.residual_rms;
    j["interior_minimum"] = q.interior_minimum;
    write_file_atomic(fit_path, j.dump(2) + "\n");
  } else {
    fs::remove(fit_path);
  }

  // Mean and sample standard deviation over the finished seeds of each ρ.
  std::map<double, std::vector<double>> losses;
  for (size_t i = 0; i < points.size(); ++i)
    if (outcomes[i].status == PointStatus::Finished) losses[points[i].rho].push_back(outcomes[i].val_loss);
  if (losses.empty()) return;
  std::vector<SweepPlotPoint> plot;
  for (const auto& [rho, values] : losses) {
    const double n = static_cast<double>(values.size());
    double mean = 0.0, squares = 0.0;
    for (double v : values) mean += v / n;
    for (double v : values) squares += (v - mean) * (v - mean);
    plot.push_back({rho, mean, values.size() > 1 ? std::sqrt(squares / (n - 1.0)) : 0.0, static_cast<int>(n)});
  }
  write_file_atomic(join(output_dir, "plot.svg"),
                    render_sweep_svg(plot, fit.fit ? &*fit.fit : nullptr, title));
}

std::string convert_plot_to_png(const std::string& output_dir) {
  const std::string svg = join(output_dir, "plot.svg"), png = join(output_dir, "plot.png");
  if (!fs::exists(svg)) return "skipped: no plot.svg (no finished point)";
  const std::string tmp = png + ".tmp.png";  // renamed over plot.png once complete
  std::vector<std::string> argv;
  if (on_path("rsvg-convert"))
    argv = {"rsvg-convert", "-o", tmp, svg};
  else if (on_path("convert"))
    argv = {"convert", svg, tmp};
  else
    return "skipped: neither rsvg-convert nor ImageMagick's convert is on PATH";
  const std::string tool = argv[0];
  argv[0] = "/usr/bin/env";  // posix_spawn takes a path; env finds the tool on PATH
  argv.insert(argv.begin() + 1, tool);
  const ChildExit exit = wait_child(start_child({argv, "/dev/null", "", {}}));
  if (!exit.ok() || !fs::exists(tmp) || fs::file_size(tmp) == 0) {
    fs::remove(tmp);
    return "failed: " + tool + " ended with " + exit.describe();
  }
  fs::rename(tmp, png);
  return "written with " + tool;
}

}  // namespace engram
