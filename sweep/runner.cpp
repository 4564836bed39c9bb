#include "sweep/runner.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

#include "launch/training_run.h"
#include "parallel/communicator.h"
#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "sweep/child_process.h"
#include "sweep/report.h"
#include "sweep/results.h"
#include "train/checkpoint.h"

namespace engram {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }
std::string log_path(const SweepPoint& p) { return join(p.run_dir, "train.log"); }

// This process's stderr appended to `path` while in scope: an in-process run logs to its train.log
// as a command-launched run does.
class StderrToFile {
 public:
  explicit StderrToFile(const std::string& path) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    EG_CHECK(fd >= 0, path, ": cannot open for appending (", std::strerror(errno), ")");
    std::fflush(stderr);
    saved_ = dup(2);
    dup2(fd, 2);
    close(fd);
  }
  ~StderrToFile() {
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
  }
  StderrToFile(const StderrToFile&) = delete;
  StderrToFile& operator=(const StderrToFile&) = delete;

 private:
  int saved_ = -1;
};

class SweepRun {
 public:
  SweepRun(const Sweep& sweep, const std::vector<SweepPoint>& points, const SweepRunOptions& options)
      : sweep_(sweep), points_(points), options_(options), outcomes_(points.size()), started_(points.size()),
        trained_(points.size()) {}

  void run();

 private:
  const SweepConfig& cfg() const { return sweep_.config; }
  std::string tool(const char* name) const { return join(options_.bin_dir, name); }
  void say(size_t i, const std::string& what) const;

  void check_existing(size_t i);
  std::vector<std::string> prepare(size_t i);
  std::string training_problem(size_t i);
  std::optional<ChildSpec> heldout_eval(size_t i, const std::vector<std::string>& env) const;
  double bits_per_byte(size_t i, const ChildExit& exit) const;
  void finish(size_t i, double bits_per_byte);
  void fail(size_t i, const std::string& why);
  void stopped(size_t i) const;
  void record();

  void run_in_process(const std::vector<size_t>& todo);
  void run_commands(const std::vector<size_t>& todo);

  const Sweep& sweep_;
  const std::vector<SweepPoint>& points_;
  SweepRunOptions options_;
  std::vector<PointOutcome> outcomes_;
  std::vector<Clock::time_point> started_;
  std::vector<FinalMetrics> trained_;  // each point's metrics.jsonl as training_problem read it, for finish
  SweepFit fit_;
};

void SweepRun::say(size_t i, const std::string& what) const {
  std::printf("[%zu/%zu] rho %.3f seed %" PRIu64 ": %s\n", i + 1, points_.size(), points_[i].rho, points_[i].seed,
              what.c_str());
  std::fflush(stdout);
}

// A run directory with a result or a checkpoint must hold the run of the planned config: a sweep
// config changed since (another budget, other base fields) would otherwise mix runs of two sweeps.
void SweepRun::check_existing(size_t i) {
  const SweepPoint& p = points_[i];
  const std::string state = point_state(p);
  if (state == "new") return;
  const std::string stored = join(p.run_dir, "config.pbtxt");
  EG_CHECK(fs::is_regular_file(stored), p.run_dir, ": has a ", state == "finished" ? "result" : "checkpoint",
           " but no config.pbtxt; remove the directory to rerun the point");
  EG_CHECK(config_to_text(parse_config_text(read_file(stored), stored)) == config_to_text(p.config), stored,
           ": differs from the config the sweep plans for rho ", p.rho, " seed ", p.seed,
           " (the sweep config changed since this run started); use another output_dir, or remove ", p.run_dir,
           " to rerun the point");
  if (state == "finished") outcomes_[i] = *read_result_marker(p.run_dir);
}

// engram-train's arguments for the point: resume from its checkpoint, or a fresh run in a clean
// directory (engram-train refuses to start afresh over a checkpoint; files of a run killed before its
// first checkpoint are of no use).
std::vector<std::string> SweepRun::prepare(size_t i) {
  const SweepPoint& p = points_[i];
  started_[i] = Clock::now();
  if (has_checkpoint(p.run_dir)) {
    say(i, "resuming from its checkpoint in " + p.run_dir);
    return {"--resume", p.run_dir};
  }
  fs::remove_all(p.run_dir);
  ensure_writable_dir(p.run_dir);
  const std::string config = join(p.run_dir, "config.pbtxt");
  write_file_atomic(config, config_to_text(p.config));
  say(i, "training " + std::to_string(p.steps) + " steps in " + p.run_dir);
  return {"--config", config};
}

// Empty when metrics.jsonl shows every step trained and the final evaluation. Keeps what it read for
// finish: the file is complete once training has ended.
std::string SweepRun::training_problem(size_t i) {
  const SweepPoint& p = points_[i];
  trained_[i] = read_final_metrics(join(p.run_dir, "metrics.jsonl"));
  const FinalMetrics& m = trained_[i];
  if (m.train_step != p.steps)
    return "training stopped at step " + std::to_string(m.train_step) + " of " + std::to_string(p.steps);
  if (m.eval_step != p.steps) return "metrics.jsonl has no evaluation at the final step " + std::to_string(p.steps);
  return "";
}

// engram-eval on heldout_text, on the device the point trained on (the slot's GPU), its JSON into the
// run directory; nullopt without heldout_text.
std::optional<ChildSpec> SweepRun::heldout_eval(size_t i, const std::vector<std::string>& env) const {
  if (!cfg().has_heldout_text()) return std::nullopt;
  const SweepPoint& p = points_[i];
  ChildSpec spec{
      {tool("engram-eval"), "--checkpoint", p.run_dir, "--text", cfg().heldout_text(), "--device", memory_device(p)},
      log_path(p),
      join(p.run_dir, "heldout_eval.json"),
      env};
  if (cfg().heldout_max_tokens() > 0)
    spec.argv.insert(spec.argv.end(), {"--max-tokens", std::to_string(cfg().heldout_max_tokens())});
  return spec;
}

double SweepRun::bits_per_byte(size_t i, const ChildExit& exit) const {
  EG_CHECK(exit.ok(), "held-out evaluation (engram-eval) ended with ", exit.describe(), " (see ",
           log_path(points_[i]), ")");
  return read_bits_per_byte(join(points_[i].run_dir, "heldout_eval.json"));
}

void SweepRun::finish(size_t i, double bits_per_byte) {
  const SweepPoint& p = points_[i];
  const FinalMetrics& m = trained_[i];
  PointOutcome o;
  o.status = PointStatus::Finished;
  o.final_train_loss = m.train_loss;
  o.val_loss = m.val_loss;
  o.heldout_bits_per_byte = bits_per_byte;
  o.wall_seconds = std::chrono::duration<double>(Clock::now() - started_[i]).count();
  o.peak_memory_bytes = peak_memory_bytes(p, m);
  write_result_marker(p, o);
  outcomes_[i] = o;
  record();
  char line[160];
  const int n = std::snprintf(line, sizeof line, "finished in %.1f s: val loss %.4f", o.wall_seconds, o.val_loss);
  if (!std::isnan(bits_per_byte))
    std::snprintf(line + n, sizeof line - n, ", held-out %.4f bits/byte", bits_per_byte);
  say(i, line);
}

void SweepRun::fail(size_t i, const std::string& why) {
  outcomes_[i].status = PointStatus::Failed;
  outcomes_[i].error = why;
  record();
  say(i, "FAILED: " + why);
}

void SweepRun::stopped(size_t i) const {
  say(i, "stopped; it continues from its checkpoint when the sweep runs again");
}

void SweepRun::record() {
  write_results_tables(cfg().output_dir(), points_, outcomes_);
  fit_ = fit_finished(points_, outcomes_);
  write_fit_and_plot(cfg().output_dir(), points_, outcomes_, fit_,
                     "Validation loss against rho, P_tot = " + std::to_string(cfg().total_params()));
}

void SweepRun::run_in_process(const std::vector<size_t>& todo) {
  const std::unique_ptr<Communicator> world = make_local_communicator();
  for (size_t i : todo) {
    if (stop_requested()) return;
    try {
      TrainingOptions training;
      const std::vector<std::string> args = prepare(i);
      (args[0] == "--resume" ? training.resume_dir : training.config_path) = args[1];
      TrainingResult result;
      {
        const StderrToFile log(log_path(points_[i]));
        result = run_training(training, *world);
      }
      if (result.interrupted()) return stopped(i);
      const std::string problem = training_problem(i);
      if (!problem.empty()) {
        fail(i, problem + " (see " + log_path(points_[i]) + ")");
        continue;
      }
      const std::optional<ChildSpec> eval = heldout_eval(i, {});
      finish(i, eval ? bits_per_byte(i, wait_child(start_child(*eval))) : kNotMeasured);
    } catch (const std::exception& e) {
      fail(i, e.what());
    }
  }
}

void SweepRun::run_commands(const std::vector<size_t>& todo) {
  struct Slot {
    pid_t pid = -1;  // -1: free
    size_t point = 0;
    bool evaluating = false;             // the held-out evaluation after training
    std::optional<ChildExit> draining;  // the child ended, processes of its group not yet
    std::vector<std::string> env;
  };
  std::vector<Slot> slots(static_cast<size_t>(cfg().launcher().max_parallel()));
  for (size_t k = 0; k < slots.size() && k < static_cast<size_t>(cfg().launcher().devices_size()); ++k)
    slots[k].env = {"CUDA_VISIBLE_DEVICES=" + cfg().launcher().devices(static_cast<int>(k))};

  const auto start_training = [&](Slot& slot, size_t i) {
    const std::vector<std::string> args = prepare(i);
    const std::string command =
        expand_launcher_command(cfg().launcher(), tool("engram-train"), args, points_[i].run_dir);
    std::ofstream(log_path(points_[i]), std::ios::app) << "engram-sweep: running " << command << "\n";
    slot.pid = start_child({{"/bin/sh", "-c", command}, log_path(points_[i]), "", slot.env});
    slot.point = i;
    slot.evaluating = false;
  };
  // A slot whose process ended: evaluate after training, or record the point.
  const auto ended = [&](Slot& slot, const ChildExit& exit) {
    const size_t i = slot.point;
    slot.pid = -1;
    if (slot.evaluating) return finish(i, bits_per_byte(i, exit));
    const std::string problem = exit.ok() ? training_problem(i) : "the training command ended with " + exit.describe();
    if (!problem.empty()) {
      if (stop_requested()) return stopped(i);
      return fail(i, problem + " (see " + log_path(points_[i]) + ")");
    }
    const std::optional<ChildSpec> eval = heldout_eval(i, slot.env);
    if (!eval) return finish(i, kNotMeasured);
    if (stop_requested()) return stopped(i);
    slot.pid = start_child(*eval);
    slot.evaluating = true;
  };

  size_t next = 0;
  bool stop_forwarded = false;
  while (true) {
    if (stop_requested() && !stop_forwarded) {  // training commands save a checkpoint and end
      for (const Slot& slot : slots)
        if (slot.pid > 0 && !slot.evaluating) signal_child(slot.pid, SIGTERM);
      stop_forwarded = true;
    }
    for (Slot& slot : slots) {
      while (slot.pid < 0 && next < todo.size() && !stop_requested()) {
        const size_t i = todo[next++];
        try {
          start_training(slot, i);
        } catch (const std::exception& e) {
          fail(i, e.what());
        }
      }
    }
    bool running = false;
    for (const Slot& slot : slots) running = running || slot.pid > 0;
    if (!running) return;
    if (const std::optional<EndedChild> child = poll_ended_child())
      for (Slot& slot : slots)
        if (slot.pid == child->pid) slot.draining = child->exit;
    bool progressed = false;
    for (Slot& slot : slots) {
      if (!slot.draining || child_group_alive(slot.pid)) continue;
      const ChildExit exit = *slot.draining;
      slot.draining.reset();
      progressed = true;
      try {
        ended(slot, exit);
      } catch (const std::exception& e) {
        slot.pid = -1;
        fail(slot.point, e.what());
      }
    }
    if (!progressed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void SweepRun::run() {
  const SweepLauncher& launcher = cfg().launcher();
  if (!launcher.command().empty())
    EG_CHECK(fs::is_regular_file(tool("engram-train")), tool("engram-train"),
             " not found (launcher.command runs the engram-train beside engram-sweep)");
  if (cfg().has_heldout_text())
    EG_CHECK(fs::is_regular_file(tool("engram-eval")), tool("engram-eval"),
             " not found (heldout_text is measured by the engram-eval beside engram-sweep)");
  // Every existing run directory is checked before anything is written.
  for (size_t i = 0; i < points_.size(); ++i) check_existing(i);
  ensure_writable_dir(cfg().output_dir());
  write_file_atomic(join(cfg().output_dir(), "sweep.pbtxt"), config_to_text(cfg()));

  std::vector<size_t> todo;
  for (size_t i = 0; i < points_.size(); ++i) {
    if (outcomes_[i].status == PointStatus::Finished)
      say(i, "finished earlier (" + result_marker_path(points_[i].run_dir) + ")");
    else
      todo.push_back(i);
  }
  record();

  install_stop_handlers();
  if (launcher.command().empty())
    run_in_process(todo);
  else
    run_commands(todo);

  record();
  print_summary(sweep_, points_, outcomes_, fit_, convert_plot_to_png(cfg().output_dir()));
  std::string failed;
  size_t n_failed = 0, n_finished = 0;
  for (size_t i = 0; i < points_.size(); ++i) {
    n_finished += outcomes_[i].status == PointStatus::Finished;
    if (outcomes_[i].status != PointStatus::Failed) continue;
    char point[64];
    std::snprintf(point, sizeof point, "%srho %.3f seed %" PRIu64, n_failed++ ? ", " : "", points_[i].rho,
                  points_[i].seed);
    failed += point;
  }
  if (stop_requested())
    std::printf("stopped by a signal with %zu of %zu points finished; run engram-sweep --config %s again to continue\n",
                n_finished, points_.size(), options_.config_path.c_str());
  std::fflush(stdout);
  EG_CHECK(n_failed == 0, n_failed, " of ", points_.size(), " points failed (", failed,
           "); the reasons are in results.csv and each run's train.log");
}

}  // namespace

void run_sweep(const Sweep& sweep, const std::vector<SweepPoint>& points, const SweepRunOptions& options) {
  SweepRun(sweep, points, options).run();
}

}  // namespace engram
