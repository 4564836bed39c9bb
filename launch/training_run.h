#pragma once
// One training run, as engram-train performs it (docs/TOOLS.md): the body of engram-train as a
// library function, so that engram-sweep can train in-process with exactly the same behaviour.
//
// A fresh run (config_path) refuses a run directory that already holds a checkpoint; resume_dir
// continues the run there from its latest checkpoint, with its config.pbtxt unless config_path is
// given too. The run directory receives config.pbtxt, metrics.jsonl and checkpoints (engram-train's
// header comment). SIGINT / SIGTERM (handlers installed by run_training) finish the current step,
// save a checkpoint and return early: the result then has steps_done < max_steps.
#include <cstdint>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/allocator.h"
#include "runtime/config/config.h"

namespace engram {

struct TrainingOptions {
  std::string config_path;             // a fresh run's config; with resume_dir, replaces the stored one
  std::string resume_dir;              // empty: a fresh run
  std::vector<std::string> overrides;  // --set field.path=value
};

struct TrainingResult {
  std::string run_dir;
  std::string last_checkpoint;  // the checkpoint saved at the end (or at the stop)
  std::string metrics_path;     // empty on ranks other than 0, which write no files
  int64_t steps_done = 0;
  int64_t max_steps = 0;
  bool interrupted() const { return steps_done < max_steps; }
};

// Collective over `world` when it has several ranks (every rank calls it with the same options).
// Errors (engram::Error) name the file or field; nothing in the run directory changes before every
// input has been checked.
TrainingResult run_training(const TrainingOptions& options, Communicator& world);

// The device `runtime` names, checked to be usable by this process (the build has the backend, a GPU
// is visible); on CUDA also sets the matmul precision and starts the peak-memory count afresh.
Device select_device(const config::RuntimeConfig& runtime);
// The device allocator's statistics (all 0 on the CPU); its peak counts from select_device.
MemoryStats device_stats(Device device);

// Makes SIGINT / SIGTERM request a stop (the first one; later ones change nothing). run_training
// installs them itself; a caller that runs several trainings installs them first to see a stop
// requested between runs.
void install_stop_handlers();
bool stop_requested();

}  // namespace engram
