// engram-train: trains a model from an experiment config.
//
//   engram-train --config FILE [--set field.path=value ...]
//   engram-train --resume RUN_DIR [--config FILE] [--set field.path=value ...]
//
// A fresh run writes <run_dir> = train.run_dir: config.pbtxt (the resolved config), metrics.jsonl (one
// JSON line per step and per evaluation; the validation loss every train.eval_every steps and at the end)
// and checkpoints/step_<8 digits>/ every train.checkpoint_every steps and at the end. A fresh run refuses a
// run directory that already holds a checkpoint. --resume continues the run in RUN_DIR from its latest
// checkpoint, with the config stored there (or --config, whose model section must be the same),
// bitwise-identically to an uninterrupted run. SIGINT / SIGTERM finish the current step, save a
// checkpoint and exit 0.
//
// Distributed: `mpirun -np N engram-train ...` (docs/DISTRIBUTED.md) runs data parallel × expert parallel
// (parallel.expert_parallel) with row-sharded Engram tables. The global batch is the same for any N: rank r
// reads its slice of every step's rows. Only rank 0 logs and writes config.pbtxt and metrics.jsonl;
// every rank writes its own shard of each checkpoint (docs/CHECKPOINT.md), which resumes at any world
// size. A failure on any rank ends every rank with "engram: rank R of N failed: ..." and exit code 1.
//
// Threads: the matrix products run on OpenBLAS, which uses one thread per core unless
// OPENBLAS_NUM_THREADS says otherwise; engram-train leaves that to the environment. Resume with the same
// setting for a bitwise-identical continuation.
//
// The training itself is run_training (launch/training_run.h), which engram-sweep also runs in-process.
#include <cinttypes>
#include <cstdio>
#include <memory>

#include "launch/cli.h"
#include "launch/training_run.h"
#include "parallel/communicator.h"

namespace engram {
namespace {

int run(const TrainingOptions& options, Communicator& world) {
  const TrainingResult r = run_training(options, world);
  if (world.rank() != 0) return 0;  // rank 0 alone reports
  if (r.interrupted()) {
    std::printf("interrupted at step %" PRId64 "; checkpoint saved to %s; resume with --resume %s\n",
                r.steps_done, r.last_checkpoint.c_str(), r.run_dir.c_str());
    return 0;
  }
  std::printf("run directory: %s\nlast checkpoint: %s\nmetrics: %s\n", r.run_dir.c_str(),
              r.last_checkpoint.c_str(), r.metrics_path.c_str());
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) {
  // MPI under an MPI launcher, a Local group of one otherwise; kept alive for the whole program.
  const std::unique_ptr<engram::Communicator> world = engram::make_world_communicator(&argc, &argv);
  engram::TrainingOptions options;
  CLI::App app{"engram-train: trains an Engram MoE language model from an experiment config"};
  app.add_option("--config", options.config_path, "experiment config (.pbtxt); see docs/CONFIG.md")
      ->type_name("FILE");
  app.add_option(
         "--resume", options.resume_dir,
         "continue the run in RUN_DIR from its latest checkpoint (with its config.pbtxt unless --config)")
      ->type_name("RUN_DIR");
  engram::cli::add_set_option(app, options.overrides);
  app.footer(
      "OpenBLAS threads: set OPENBLAS_NUM_THREADS (default: one per core); resume with the same value.");
  return engram::cli::run_tool(app, "engram-train", argc, argv, [&] {
    if (options.config_path.empty() && options.resume_dir.empty())
      throw engram::Error("one of --config FILE or --resume RUN_DIR is required");
    engram::check_world_spans_the_launch(*world);
    // Several ranks: an error on one must end all of them (the others would wait in a collective).
    if (world->size() == 1) return engram::run(options, *world);
    return engram::run_or_abort_all(*world, [&] { return engram::run(options, *world); });
  });
}
