#pragma once
// Sweep configs (engram-sweep --config SWEEP.pbtxt; every field in docs/SWEEP.md): loading with the
// experiment configs' parser and --set, defaults, validation naming the field, and the launcher's
// command template.
#include <string>
#include <vector>

#include "runtime/config/config.h"
#include "sweep/sweep.pb.h"

namespace engram {

using config::SweepConfig;
using config::SweepLauncher;

// A loaded sweep: its config with defaults resolved, and the base experiment config it names.
struct Sweep {
  // rho holds every point, sorted: rho (0, 0.2, ..., 1.0 when empty) merged with extra_rho, which is
  // then empty; seeds is [0] when empty.
  SweepConfig config;
  ExperimentConfig base;  // load_config(base_config, set)
};

// Reads `path` (text format; syntax errors "<path>:<line>:<column>: ..."), applies `overrides`
// (`field.path=value` of SweepConfig, as engram-train's --set), resolves the defaults and validates.
// Every error names the file and the field; errors of the base config keep its own path.
Sweep load_sweep(const std::string& path, const std::vector<std::string>& overrides = {});

// The run directory name of a point: "rho_0.750_seed_3". ρ values that print the same to three
// decimals are refused by load_sweep, so names never collide.
std::string point_dir_name(double rho, uint64_t seed);

// launcher.command with its placeholders replaced: {engram_train}, {args} and {run_dir} by the given
// words (each quoted for /bin/sh), {ranks} by launcher.ranks.
std::string expand_launcher_command(const SweepLauncher& launcher, const std::string& engram_train,
                                    const std::vector<std::string>& args, const std::string& run_dir);

}  // namespace engram
