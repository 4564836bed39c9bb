// Training-step time of a config on random tokens, on the device its runtime section names: what
// engram-train would do per step (forward, backward, clipping, AdamW + sparse Adam, bias update),
// without data files. Prints one JSON object: median step time, tokens/s, model FLOPs utilization
// (engram-plan's FLOPs per step over --peak-tflops), peak device memory, and each phase's share of
// the step (TraceRange phase timing, which waits for the GPU at every range: those steps are timed
// apart from the plain ones).
//   step_time --config configs/h100-bench.pbtxt [--set FIELD=VALUE]... [--steps 10] [--warmup 2]
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "launch/cli.h"
#include "launch/training_run.h"
#include "model/plan.h"
#include "runtime/allocator.h"
#include "runtime/trace_range.h"
#include "train/trainer.h"

namespace engram {
namespace {

struct Options {
  std::string config;
  std::vector<std::string> overrides;
  int steps = 10;
  int warmup = 2;
  double peak_tflops = 989.0;  // H100 SXM dense bf16
};

// The global batch of one step as micro-batches of random tokens (as the data loader splits it).
std::vector<Batch> random_batches(const ExperimentConfig& cfg, std::mt19937& rng) {
  const config::TrainConfig& t = cfg.train();
  const int64_t micro = t.micro_batch_size() > 0 ? t.micro_batch_size() : t.global_batch_size();
  std::uniform_int_distribution<int32_t> token(0, cfg.model().vocab_size() - 1);
  std::vector<Batch> batches;
  for (int64_t b = 0; b < t.global_batch_size() / micro; ++b) {
    std::vector<int32_t> inputs(micro * t.seq_len()), targets(micro * t.seq_len());
    for (auto& x : inputs) x = token(rng);
    for (auto& x : targets) x = token(rng);
    batches.push_back({Tensor::from_vector(inputs, {micro, t.seq_len()}),
                       Tensor::from_vector(targets, {micro, t.seq_len()})});
  }
  return batches;
}

double seconds_of(Trainer& trainer, const std::vector<Batch>& batches) {
  const auto start = std::chrono::steady_clock::now();
  trainer.step(batches);  // ends with host reads of the loss and loads: the device is done
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(const Options& o) {
  const ExperimentConfig cfg = load_config(o.config, o.overrides);
  const Device device = select_device(cfg.runtime());
  Model model(cfg.model(), {}, nullptr, device);
  Trainer trainer(model, cfg.optim(), o.warmup + 2 * o.steps);
  std::mt19937 rng(0);
  const std::vector<Batch> batches = random_batches(cfg, rng);
  for (int i = 0; i < o.warmup; ++i) seconds_of(trainer, batches);

  std::vector<double> times;
  // Blocks the run's allocator hands back during the timed steps (cudaFree on a GPU: a device-wide wait).
  const auto returned_blocks = [&] {
    return (device == Device::CUDA ? device_stats(device) : host_memory_stats()).returned_blocks;
  };
  const size_t returned_before = returned_blocks();
  for (int i = 0; i < o.steps; ++i) times.push_back(seconds_of(trainer, batches));
  const size_t returned_in_timed_steps = returned_blocks() - returned_before;
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];

  set_phase_timing(true);
  reset_phase_seconds();
  double timed_total = 0.0;
  for (int i = 0; i < o.steps; ++i) timed_total += seconds_of(trainer, batches);
  set_phase_timing(false);

  const Plan plan = make_plan(cfg);
  const double tokens = static_cast<double>(plan.flops.tokens_per_step);
  nlohmann::ordered_json phases = nlohmann::ordered_json::object();
  for (const auto& [name, seconds] : phase_seconds()) phases[name] = seconds / timed_total;
  nlohmann::ordered_json out = {
      {"config", o.config},
      {"device", device == Device::CUDA ? "cuda" : "cpu"},
      {"matmul_precision",
       device == Device::CPU ? "FLOAT32" : config::MatmulPrecision_Name(cfg.runtime().matmul_precision())},
      {"tokens_per_step", plan.flops.tokens_per_step},
      {"median_step_ms", median * 1e3},
      {"tokens_per_s", tokens / median},
      {"model_tflops", plan.flops.per_step / median / 1e12},
      {"mfu", plan.flops.per_step / median / (o.peak_tflops * 1e12)},
      {"peak_device_bytes", device_stats(device).peak_in_use},
      {"blocks_returned_in_timed_steps", returned_in_timed_steps},
      {"peak_host_bytes", host_memory_stats().peak_in_use},
      {"phase_share", phases}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) {
  engram::Options o;
  CLI::App app{"step_time: training-step time of a config on random tokens"};
  app.add_option("--config", o.config, "experiment config (.pbtxt)")->required();
  engram::cli::add_set_option(app, o.overrides);
  app.add_option("--steps", o.steps, "timed steps (median reported)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", o.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--peak-tflops", o.peak_tflops, "the device's dense bf16 peak, for MFU");
  return engram::cli::run_tool(app, "step_time", argc, argv, [&] { return engram::run(o); });
}
