#include "sweep/sweep_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "runtime/atomic_file.h"
#include "runtime/error.h"

namespace engram {

namespace {

namespace fs = std::filesystem;

constexpr double kDefaultRho[] = {0.0, 0.2, 0.4, 0.6, 0.8, 1.0};

// The placeholders launcher.command may hold; {engram_train} and {args} are required.
constexpr const char* kPlaceholders[] = {"{engram_train}", "{args}", "{ranks}", "{run_dir}"};

std::string rho_name(double rho) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", rho);
  return buf;
}

// rho (or its default) and extra_rho, each value checked, merged and sorted. Values that print the same
// to three decimals would share a run directory: refused, naming both fields.
void resolve_rho(SweepConfig& cfg) {
  std::vector<std::pair<double, std::string>> points;  // value, field that gave it
  if (cfg.rho_size() == 0)
    for (double rho : kDefaultRho) points.emplace_back(rho, "rho (default)");
  for (int i = 0; i < cfg.rho_size(); ++i) points.emplace_back(cfg.rho(i), "rho[" + std::to_string(i) + "]");
  for (int i = 0; i < cfg.extra_rho_size(); ++i)
    points.emplace_back(cfg.extra_rho(i), "extra_rho[" + std::to_string(i) + "]");
  for (const auto& [rho, field] : points)
    EG_CHECK(std::isfinite(rho) && rho >= 0.0 && rho <= 1.0, field, " = ", rho, " must be in [0, 1]");
  std::stable_sort(points.begin(), points.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < points.size(); ++i)
    EG_CHECK(rho_name(points[i].first) != rho_name(points[i - 1].first), points[i].second, " = ",
             points[i].first, " repeats ", points[i - 1].second, " = ", points[i - 1].first,
             " (ρ values must differ in their first three decimals: each names a run directory rho_",
             rho_name(points[i].first), "_seed_S)");
  cfg.clear_rho();
  cfg.clear_extra_rho();
  for (const auto& point : points) cfg.add_rho(point.first);
}

void resolve_seeds(SweepConfig& cfg) {
  if (cfg.seeds_size() == 0) cfg.add_seeds(0);
  for (int i = 0; i < cfg.seeds_size(); ++i)
    for (int j = 0; j < i; ++j)
      EG_CHECK(cfg.seeds(i) != cfg.seeds(j), "seeds[", i, "] = ", cfg.seeds(i), " repeats seeds[", j, "]");
}

void validate_launcher(const SweepLauncher& l) {
  EG_CHECK(l.ranks() >= 1, "launcher.ranks = ", l.ranks(), " must be >= 1");
  EG_CHECK(l.max_parallel() >= 1, "launcher.max_parallel = ", l.max_parallel(), " must be >= 1");
  if (l.command().empty()) {
    EG_CHECK(l.ranks() == 1, "launcher.ranks = ", l.ranks(),
             " needs launcher.command (the in-process launcher runs one rank), e.g. \"mpirun -np {ranks} "
             "{engram_train} {args}\"");
    EG_CHECK(l.max_parallel() == 1, "launcher.max_parallel = ", l.max_parallel(),
             " needs launcher.command (in-process runs go one at a time), e.g. \"{engram_train} {args}\"");
    EG_CHECK(l.devices_size() == 0,
             "launcher.devices is set but launcher.command is not (devices go to command-launched runs)");
    return;
  }
  for (const char* required : {"{engram_train}", "{args}"})
    EG_CHECK(l.command().find(required) != std::string::npos, "launcher.command = \"", l.command(),
             "\" must contain ", required);
  // Every {word} must be a known placeholder: a misspelt one would reach the shell as it is. Shell
  // syntax with braces (${VAR}, { a; b; }) is left alone.
  const std::string& c = l.command();
  for (size_t open = c.find('{'); open != std::string::npos; open = c.find('{', open + 1)) {
    const size_t close = c.find('}', open);
    if ((open > 0 && c[open - 1] == '$') || close == std::string::npos) continue;
    const std::string word = c.substr(open, close - open + 1);
    const bool placeholder_like = word.size() > 2 && std::all_of(word.begin() + 1, word.end() - 1, [](char ch) {
      return (ch >= 'a' && ch <= 'z') || ch == '_';
    });
    EG_CHECK(!placeholder_like || std::find(std::begin(kPlaceholders), std::end(kPlaceholders), word) !=
                                      std::end(kPlaceholders),
             "launcher.command = \"", c, "\": unknown placeholder ", word,
             " (known: {engram_train}, {args}, {ranks}, {run_dir})");
  }
  EG_CHECK(l.devices_size() == 0 || l.devices_size() == l.max_parallel(), "launcher.devices has ",
           l.devices_size(), " entries but launcher.max_parallel = ", l.max_parallel(),
           " (one CUDA_VISIBLE_DEVICES value per parallel slot, or none)");
}

void validate_sweep(const SweepConfig& cfg) {
  EG_CHECK(!cfg.base_config().empty(), "base_config is required but not set");
  EG_CHECK(cfg.has_total_params(), "total_params is required but not set");
  EG_CHECK(cfg.total_params() > 0, "total_params = ", cfg.total_params(), " must be > 0");
  EG_CHECK(cfg.has_train_tokens() != cfg.has_train_flops(),
           "exactly one of train_tokens or train_flops must be set (the training budget), ",
           cfg.has_train_tokens() ? "both are" : "neither is");
  if (cfg.has_train_tokens())
    EG_CHECK(cfg.train_tokens() > 0, "train_tokens = ", cfg.train_tokens(), " must be > 0");
  else
    EG_CHECK(std::isfinite(cfg.train_flops()) && cfg.train_flops() > 0, "train_flops = ", cfg.train_flops(),
             " must be > 0");
  validate_launcher(cfg.launcher());
  EG_CHECK(!cfg.output_dir().empty(), "output_dir is required but not set");
  if (cfg.has_heldout_text())
    EG_CHECK(fs::is_regular_file(cfg.heldout_text()), "heldout_text = ", cfg.heldout_text(), ": no such file");
  EG_CHECK(cfg.heldout_max_tokens() >= 0, "heldout_max_tokens = ", cfg.heldout_max_tokens(),
           " must be >= 0 (0: the whole text)");
}

ExperimentConfig load_base(const SweepConfig& cfg) {
  std::vector<std::string> overrides(cfg.set().begin(), cfg.set().end());
  ExperimentConfig base;
  try {
    base = load_config(cfg.base_config(), overrides);
  } catch (const Error& e) {
    EG_FAIL("base_config: ", e.what());
  }
  EG_CHECK(base.train().eval_every() > 0, "base_config: ", cfg.base_config(), ": train.eval_every = ",
           base.train().eval_every(), " must be > 0 (the sweep compares the final validation losses)");
  return base;
}

// One word for /bin/sh: single-quoted, a ' inside written '\''.
std::string shell_quote(const std::string& word) {
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

Sweep load_sweep(const std::string& path, const std::vector<std::string>& overrides) {
  EG_CHECK(fs::is_regular_file(path), path, ": cannot open sweep config file");
  Sweep sweep;
  parse_text_message(read_file(path), path, sweep.config);
  apply_overrides(sweep.config, overrides);
  try {
    validate_sweep(sweep.config);
    resolve_rho(sweep.config);
    resolve_seeds(sweep.config);
    sweep.base = load_base(sweep.config);
  } catch (const Error& e) {
    EG_FAIL(path, ": ", e.what());
  }
  return sweep;
}

std::string point_dir_name(double rho, uint64_t seed) {
  return "rho_" + rho_name(rho) + "_seed_" + std::to_string(seed);
}

std::string expand_launcher_command(const SweepLauncher& launcher, const std::string& engram_train,
                                    const std::vector<std::string>& args, const std::string& run_dir) {
  std::string quoted_args;
  for (const std::string& arg : args) quoted_args += (quoted_args.empty() ? "" : " ") + shell_quote(arg);
  const std::pair<std::string, std::string> values[] = {{"{engram_train}", shell_quote(engram_train)},
                                                        {"{args}", quoted_args},
                                                        {"{ranks}", std::to_string(launcher.ranks())},
                                                        {"{run_dir}", shell_quote(run_dir)}};
  // One pass over the template, so a value put in is never expanded again.
  const std::string& text = launcher.command();
  std::string command;
  for (size_t at = 0; at < text.size();) {
    const auto* match = std::find_if(std::begin(values), std::end(values),
                                     [&](const auto& v) { return text.compare(at, v.first.size(), v.first) == 0; });
    if (match == std::end(values)) {
      command += text[at++];
      continue;
    }
    command += match->second;
    at += match->first.size();
  }
  return command;
}

}  // namespace engram
