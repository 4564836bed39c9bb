// engram-sweep: the ρ sweep (docs/SWEEP.md). For each ρ (the share of the sparse parameter budget
// given to routed experts; the rest goes to Engram tables) and seed, it allocates the model at a fixed
// total parameter count, trains it with engram-train's code for a token or FLOP budget, measures the
// final validation loss (and held-out bits per byte), then fits loss against ρ and plots it.
//
//   engram-sweep --config SWEEP.pbtxt [--set field.path=value ...] [--dry-run]
//
// --dry-run prints the allocation of every point with its planned steps, tokens and FLOPs, and what
// a run would do with each (new, resume, finished); it trains and writes nothing. Otherwise the
// results go to output_dir (results.csv, results.jsonl, fit.json, plot.svg, plot.png) with one run
// directory per point; a second run skips finished points and resumes unfinished ones. Exit code 1
// with one line "engram-sweep: error: ..." for a bad config, and after the summary when a point failed.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "launch/cli.h"
#include "sweep/report.h"
#include "sweep/runner.h"
#include "sweep/sweep_config.h"
#include "sweep/sweep_plan.h"

int main(int argc, char** argv) {
  std::string config_path;
  std::vector<std::string> overrides;
  bool dry_run = false;
  CLI::App app{"engram-sweep: trains one model per ρ (experts vs Engram tables at a fixed parameter count), "
               "fits validation loss against ρ and plots it"};
  app.add_option("--config", config_path, "sweep config (.pbtxt); see docs/SWEEP.md")->type_name("FILE")->required();
  engram::cli::add_set_option(app, overrides);
  app.get_option("--set")->description(
      "override a sweep config field, e.g. train_tokens=2000000 or rho=[0,0.5,1] (repeatable)");
  app.add_flag("--dry-run", dry_run, "print the allocation and the planned steps of every point; train nothing");
  return engram::cli::run_tool(app, "engram-sweep", argc, argv, [&] {
    const engram::Sweep sweep = engram::load_sweep(config_path, overrides);
    const std::vector<engram::SweepPoint> points = engram::plan_sweep(sweep);
    if (dry_run) {
      engram::print_plan(config_path, sweep, points);
      return 0;
    }
    // engram-train and engram-eval are installed beside this binary.
    const std::string bin_dir = std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
    engram::run_sweep(sweep, points, {config_path, bin_dir});
    return 0;
  });
}
