// engram-sweep end to end, on data the test makes (a small trained tokenizer, token shards of a noisy
// repeating pattern carrying its hash, a compression table) and a very small MoE + Engram base model:
// - a 3-point micro sweep (ρ = 0, 0.5, 1) writes results.csv and results.jsonl whose rows agree with each
//   run's metrics.jsonl, its config.pbtxt (counts and FLOPs from the planner) and its engram-eval output,
//   a fit.json whose parabola passes through the three losses, and plot.svg; --dry-run afterwards marks
//   every point finished;
// - a sweep killed (SIGKILL) after its first point finished resumes: the finished point's files are
//   untouched, the point in flight continues from its checkpoint, every point finishes; the same output
//   directory with another budget is refused without touching it;
// - a point that fails (a corrupt checkpoint in-process; a command that exits 3) is reported in the
//   results and on stderr, the other points finish, and the exit code is 1;
// - the command launcher with max_parallel 2 runs two points at once, each slot with its own
//   CUDA_VISIBLE_DEVICES, with results equal to the in-process launcher's;
// - bad sweep configs exit 1 with one line naming the field and write nothing; --dry-run prints the
//   allocation of every point (as allocate() computes it), the planned steps, and the planner's FLOPs
//   and peak memory of each point's model.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "model/plan.h"
#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/config/config.h"
#include "runtime/token_shards.h"
#include "sweep/allocation.h"
#include "sweep/child_process.h"
#include "tests/test_util.h"
#include "text/compression.h"
#include "text/tokenizer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing_util::CommandResult;

constexpr int kPeriod = 13;
constexpr int kTokensPerStep = 4 * 16;  // global_batch_size · seq_len of the base config

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<json> jsonl(const fs::path& path) {
  std::vector<json> rows;
  for (const std::string& line : lines_of(read_file(path))) rows.push_back(json::parse(line));
  return rows;
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      cell += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      cells.push_back(cell);
      cell.clear();
    } else {
      cell += c;
    }
  }
  cells.push_back(cell);
  return cells;
}

// Every regular file under `dir` with its bytes and modification time.
std::map<std::string, std::pair<std::string, fs::file_time_type>> snapshot(const fs::path& dir) {
  std::map<std::string, std::pair<std::string, fs::file_time_type>> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file())
      files[fs::relative(entry.path(), dir).string()] = {read_file(entry.path()), entry.last_write_time()};
  return files;
}

// The last "train" and "eval" lines of a run's metrics.jsonl.
struct LastMetrics {
  json train, eval;
};
LastMetrics last_metrics(const fs::path& run_dir) {
  LastMetrics last;
  for (const json& m : jsonl(run_dir / "metrics.jsonl")) (m["type"] == "train" ? last.train : last.eval) = m;
  return last;
}

class SweepCli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string text;
    for (int i = 0; i < 300; ++i)
      text += "run " + std::to_string(i) + ": the sweep trades routed experts for engram tables, " +
              std::to_string(i * 7 % 13) + " at a time.\n";
    tokenizer_ = testing_util::train_test_tokenizer(dir_.path(), text, 320);
    const Tokenizer tok(tokenizer_);
    vocab_ = tok.vocab_size();
    eos_ = tok.eos_id();
    const uint64_t hash = tok.hash();
    write_token_shard((dir_ / "train.bin").string(), testing_util::noisy_pattern_tokens(6000, 1, vocab_, kPeriod),
                      hash, vocab_, 0);
    write_token_shard((dir_ / "val.bin").string(), testing_util::noisy_pattern_tokens(1200, 2, vocab_, kPeriod),
                      hash, vocab_, 0);
    std::vector<int32_t> table(static_cast<size_t>(vocab_));
    for (int i = 0; i < vocab_; ++i) table[static_cast<size_t>(i)] = i < 48 ? i : i - 48;
    write_compression_table((dir_ / "compression.bin").string(), table, hash);
    write_file_atomic((dir_ / "heldout.txt").string(), text.substr(0, 2000));

    std::ostringstream base;
    base << "model {\n  vocab_size: " << vocab_ << "\n  eos_id: " << eos_
         << "\n  d_model: 16\n  n_layers: 2\n  n_heads: 2\n  d_ff: 32\n  n_dense_layers: 1\n"
         << "  moe { n_routed_experts: 4 top_k: 2 expert_d_ff: 16 n_shared_experts: 1 bias_update_rate: 0.01 }\n"
         << "  engram { layers: [1] max_ngram: 3 heads_per_ngram: 2 head_dim: 4 table_size: [200, 200] }\n}\n"
         << "optim { lr: 1e-2 min_lr: 1e-3 warmup_steps: 2 }\n"
         << "data { train_shards: \"" << (dir_ / "train.bin").string() << "\" val_shards: \""
         << (dir_ / "val.bin").string() << "\" tokenizer: \"" << tokenizer_ << "\" compression_table: \""
         << (dir_ / "compression.bin").string() << "\" }\n"
         << "train { seq_len: 16 global_batch_size: 4 micro_batch_size: 2 max_steps: 100 log_every: 10"
         << " eval_every: 10 eval_batches: 2 checkpoint_every: 5 run_dir: \"replaced by the sweep\" }\n";
    base_ = dir_ / "base.pbtxt";
    write_file_atomic(base_.string(), base.str());

    // P_tot: the base without Engram and with 12 routed experts, so that ρ = 1 (whole experts only)
    // can meet it exactly.
    ModelConfig at_rho_1 = load_config(base_.string()).model();
    at_rho_1.clear_engram();
    at_rho_1.mutable_moe()->set_n_routed_experts(12);
    total_params_ = count_parameters(at_rho_1).total();
  }
  void TearDown() override {
    if (HasFailure()) dir_.keep();
  }

  // A sweep config over `rho` with `steps` training steps per point; `extra` is appended.
  fs::path write_sweep(const std::string& name, const std::string& rho, int steps, const std::string& extra = "") {
    std::ostringstream s;
    s << "base_config: \"" << base_.string() << "\"\n"
      << "total_params: " << total_params_ << "\n"
      << "rho: " << rho << "\n"
      << "train_tokens: " << steps * kTokensPerStep << "\n"
      << "output_dir: \"" << (dir_ / name).string() << "\"\n"
      << extra;
    const fs::path path = dir_ / (name + ".pbtxt");
    write_file_atomic(path.string(), s.str());
    return path;
  }

  static CommandResult sweep(const std::string& args) {
    return testing_util::run_command(std::string(ENGRAM_BIN_DIR) + "/engram-sweep " + args);
  }

  // Exit 1, exactly one stderr line "engram-sweep: error: ..." containing every piece.
  static void expect_one_line_error(const CommandResult& r, const std::vector<std::string>& pieces) {
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    const std::vector<std::string> lines = lines_of(r.err);
    ASSERT_EQ(lines.size(), 1u) << r.err;
    EXPECT_EQ(lines[0].rfind("engram-sweep: error: ", 0), 0u) << lines[0];
    for (const std::string& piece : pieces) EXPECT_NE(lines[0].find(piece), std::string::npos) << lines[0];
  }

  // Checks one results row against the run directory it names: metrics.jsonl, config.pbtxt and the
  // planner, engram-eval's output.
  void expect_row_matches_run(const json& row, uint64_t seed, int steps) const {
    SCOPED_TRACE("rho " + row["rho"].dump());
    ASSERT_EQ(row["status"], "finished") << row.dump();
    const fs::path run = row["run_dir"].get<std::string>();
    const LastMetrics m = last_metrics(run);
    EXPECT_EQ(m.train["step"], steps);
    EXPECT_EQ(m.eval["step"], steps);
    EXPECT_EQ(row["final_train_loss"].get<double>(), m.train["loss"].get<double>());
    EXPECT_EQ(row["val_loss"].get<double>(), m.eval["val_loss"].get<double>());
    // The sweep trains on the CPU: the peak is the host's (the eval line's device peak is 0 there).
    EXPECT_EQ(row["memory_device"], "cpu");
    EXPECT_EQ(row["peak_memory_bytes"].get<int64_t>(), m.eval["peak_host_bytes"].get<int64_t>());
    EXPECT_GT(row["peak_memory_bytes"].get<int64_t>(), 0);
    EXPECT_GT(row["wall_seconds"].get<double>(), 0.0);

    const ExperimentConfig cfg = parse_config_text(read_file(run / "config.pbtxt"), "config.pbtxt");
    const ParameterCounts counts = count_parameters(cfg.model());
    EXPECT_EQ(row["seed"].get<uint64_t>(), seed);
    EXPECT_EQ(cfg.model().seed(), seed);
    EXPECT_EQ(cfg.data().seed(), seed);
    EXPECT_EQ(cfg.train().max_steps(), steps);
    EXPECT_EQ(row["steps"], steps);
    EXPECT_EQ(row["tokens"], steps * kTokensPerStep);
    EXPECT_EQ(row["total_params_target"], total_params_);
    EXPECT_EQ(row["total_params"], counts.total());
    EXPECT_EQ(row["activated_params"], counts.activated_per_token());
    EXPECT_EQ(row["routed_experts"], cfg.model().moe().n_routed_experts());
    const std::vector<int64_t> rows = engram_table_rows(cfg.model());
    int64_t table_rows = 0;
    for (int64_t r : rows) table_rows += r;
    EXPECT_EQ(row["table_rows"], table_rows);
    const double error = static_cast<double>(counts.total() - total_params_) / static_cast<double>(total_params_);
    EXPECT_DOUBLE_EQ(row["total_params_error"].get<double>(), error);
    EXPECT_LE(std::abs(error), 0.01);
    EXPECT_DOUBLE_EQ(row["flops"].get<double>(), steps * make_plan(cfg).flops.per_step);
    if (row["rho"] == 1.0) {
      EXPECT_FALSE(has_engram(cfg.model()));
    }
    if (row["rho"] == 0.0) {
      EXPECT_EQ(cfg.model().moe().n_routed_experts(), cfg.model().moe().top_k());
    }

    const json eval = json::parse(read_file(run / "heldout_eval.json"));
    EXPECT_EQ(row["heldout_bits_per_byte"].get<double>(), eval["bits_per_byte"].get<double>());
    EXPECT_EQ(eval["bytes"], 2000);
  }

  testing_util::ScopedTempDir dir_{"test_sweep_cli"};
  std::string tokenizer_;
  int vocab_ = 0, eos_ = 0;
  fs::path base_;
  int64_t total_params_ = 0;
};

TEST_F(SweepCli, MicroSweepWritesResultsFitAndPlot) {
  const std::string heldout = "heldout_text: \"" + (dir_ / "heldout.txt").string() + "\"\n";
  const fs::path config = write_sweep("micro", "[0, 0.5, 1]", 12, heldout);
  const CommandResult r = sweep("--config '" + config.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.err, "") << "the in-process runs log to their train.log";
  const fs::path out = dir_ / "micro";

  // results.jsonl: one row per point in plan order; results.csv: the same rows.
  const std::vector<json> rows = jsonl(out / "results.jsonl");
  ASSERT_EQ(rows.size(), 3u);
  const std::vector<std::string> csv = lines_of(read_file(out / "results.csv"));
  ASSERT_EQ(csv.size(), 4u);
  const std::vector<std::string> header = split_csv_line(csv[0]);
  for (const char* column : {"rho", "seed", "status", "routed_experts", "table_rows", "total_params_target",
                             "total_params", "total_params_error", "activated_params", "tokens", "flops",
                             "final_train_loss", "val_loss", "heldout_bits_per_byte", "wall_seconds",
                             "peak_memory_bytes", "memory_device"})
    EXPECT_NE(std::find(header.begin(), header.end(), column), header.end()) << column;
  const double rho[] = {0.0, 0.5, 1.0};
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i]["rho"].get<double>(), rho[i]);
    expect_row_matches_run(rows[i], 0, 12);
    const std::vector<std::string> cells = split_csv_line(csv[i + 1]);
    ASSERT_EQ(cells.size(), header.size());
    for (size_t c = 0; c < header.size(); ++c) {
      const json& value = rows[i][header[c]];
      if (value.is_null())
        EXPECT_EQ(cells[c], "") << header[c];
      else if (value.is_string())
        EXPECT_EQ(cells[c], value.get<std::string>()) << header[c];
      else
        EXPECT_EQ(std::stod(cells[c]), value.get<double>()) << header[c];
    }
  }
  // The allocation moves parameters from tables to experts as ρ grows.
  EXPECT_LT(rows[0]["routed_experts"].get<int>(), rows[1]["routed_experts"].get<int>());
  EXPECT_LT(rows[1]["routed_experts"].get<int>(), rows[2]["routed_experts"].get<int>());
  EXPECT_GT(rows[0]["table_rows"].get<int>(), rows[1]["table_rows"].get<int>());
  EXPECT_EQ(rows[2]["table_rows"], 0);

  // Three ρ values, one seed: the least-squares parabola passes through the three losses.
  const json fit = json::parse(read_file(out / "fit.json"));
  EXPECT_EQ(fit["observations"], 3);
  const auto parabola = [&](double x) {
    return fit["a"].get<double>() * x * x + fit["b"].get<double>() * x + fit["c"].get<double>();
  };
  for (const json& row : rows)
    EXPECT_NEAR(parabola(row["rho"].get<double>()), row["val_loss"].get<double>(), 1e-9);
  EXPECT_NEAR(fit["residual_rms"].get<double>(), 0.0, 1e-9);
  EXPECT_NEAR(fit["loss_star"].get<double>(), parabola(fit["rho_star"].get<double>()), 1e-9);
  EXPECT_GE(fit["rho_star"].get<double>(), 0.0);
  EXPECT_LE(fit["rho_star"].get<double>(), 1.0);

  const std::string svg = read_file(out / "plot.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);

  // The summary names every point, ρ* and the files.
  for (const char* piece : {"0.000", "0.500", "1.000", "rho*", "results.csv", "plot.png: "})
    EXPECT_NE(r.out.find(piece), std::string::npos) << piece << " not in:\n" << r.out;

  // A dry run now reports every point finished, and changes nothing.
  const auto before = snapshot(out);
  const CommandResult dry = sweep("--config '" + config.string() + "' --dry-run");
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  int finished = 0;
  for (const std::string& line : lines_of(dry.out)) finished += line.find(" finished") != std::string::npos;
  EXPECT_EQ(finished, 3) << dry.out;
  EXPECT_EQ(snapshot(out), before);
}

TEST_F(SweepCli, KilledSweepResumesWithoutRedoingFinishedPoints) {
  constexpr int kSteps = 150;
  const fs::path config = write_sweep("killed", "[0, 0.5, 1]", kSteps);
  const fs::path out = dir_ / "killed";
  const fs::path first = out / "rho_0.000_seed_0", second = out / "rho_0.500_seed_0";
  const std::string tool = std::string(ENGRAM_BIN_DIR) + "/engram-sweep";
  const pid_t pid = start_child({{tool, "--config", config.string()}, (dir_ / "killed.log").string(), "", {}});
  // Kill once the first point has its result and the second a checkpoint (it checkpoints every 5 steps).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(40);
  while (!(fs::exists(first / "result.json") && fs::exists(second / "checkpoints" / "latest")) &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  signal_child(pid, SIGKILL);
  const ChildExit killed = wait_child(pid);
  ASSERT_EQ(killed.signal, SIGKILL) << "the sweep ended before it was killed: " << read_file(dir_ / "killed.log");
  ASSERT_TRUE(fs::exists(first / "result.json"));
  ASSERT_FALSE(fs::exists(second / "result.json")) << "the second point finished before the kill";
  const auto first_files = snapshot(first);

  const CommandResult resumed = sweep("--config '" + config.string() + "'");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  EXPECT_NE(resumed.out.find("[1/3] rho 0.000 seed 0: finished earlier"), std::string::npos) << resumed.out;
  EXPECT_NE(resumed.out.find("[2/3] rho 0.500 seed 0: resuming"), std::string::npos) << resumed.out;
  EXPECT_EQ(snapshot(first), first_files) << "a finished point was touched";
  EXPECT_NE(read_file(second / "train.log").find("resumed from"), std::string::npos);

  // The resumed run's metrics read as one uninterrupted run: steps 1..N once each.
  int64_t step = 0;
  for (const json& m : jsonl(second / "metrics.jsonl")) {
    if (m["type"] == "train") {
      EXPECT_EQ(m["step"], ++step);
    }
  }
  EXPECT_EQ(step, kSteps);
  const std::vector<json> rows = jsonl(out / "results.jsonl");
  ASSERT_EQ(rows.size(), 3u);
  for (const json& row : rows) {
    EXPECT_EQ(row["status"], "finished") << row.dump();
    EXPECT_EQ(row["val_loss"].get<double>(), last_metrics(row["run_dir"].get<std::string>()).eval["val_loss"]);
  }

  // The same output directory with another budget: refused before anything is touched.
  const auto everything = snapshot(out);
  expect_one_line_error(sweep("--config '" + config.string() + "' --set train_tokens=6400"),
                        {(first / "config.pbtxt").string(), "differs", "output_dir"});
  EXPECT_EQ(snapshot(out), everything);
}

TEST_F(SweepCli, FailedPointsAreReportedAndTheOthersFinish) {
  // In-process: a finished sweep whose middle point lost its result and has a broken checkpoint pointer.
  const fs::path config = write_sweep("failing", "[0, 0.5, 1]", 6);
  ASSERT_EQ(sweep("--config '" + config.string() + "'").exit_code, 0);
  const fs::path broken = dir_ / "failing" / "rho_0.500_seed_0";
  fs::remove(broken / "result.json");
  write_file_atomic((broken / "checkpoints" / "latest").string(), "step_99999999\n");
  const CommandResult in_process = sweep("--config '" + config.string() + "'");
  EXPECT_EQ(in_process.exit_code, 1);
  EXPECT_NE(in_process.err.find("engram-sweep: error: 1 of 3 points failed (rho 0.500 seed 0)"), std::string::npos)
      << in_process.err;
  std::vector<json> rows = jsonl(dir_ / "failing" / "results.jsonl");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["status"], "finished");
  EXPECT_EQ(rows[1]["status"], "failed");
  EXPECT_NE(rows[1]["error"].get<std::string>().find("step_99999999"), std::string::npos) << rows[1].dump();
  EXPECT_TRUE(rows[1]["val_loss"].is_null());
  EXPECT_EQ(rows[2]["status"], "finished");
  EXPECT_FALSE(fs::exists(dir_ / "failing" / "fit.json")) << "a fit from two ρ values";

  // Command launcher: the run of ρ = 0.5 exits 3 before training; the others run.
  const fs::path failing_command = write_sweep(
      "failing_command", "[0, 0.5, 1]", 6,
      "launcher { command: \"case {run_dir} in *rho_0.500*) echo refused >&2; exit 3;; esac; {engram_train} "
      "{args}\" }\n");
  const CommandResult command = sweep("--config '" + failing_command.string() + "'");
  EXPECT_EQ(command.exit_code, 1);
  EXPECT_NE(command.err.find("1 of 3 points failed (rho 0.500 seed 0)"), std::string::npos) << command.err;
  rows = jsonl(dir_ / "failing_command" / "results.jsonl");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["status"], "finished");
  EXPECT_EQ(rows[1]["status"], "failed");
  EXPECT_NE(rows[1]["error"].get<std::string>().find("exit code 3"), std::string::npos) << rows[1].dump();
  EXPECT_NE(read_file(dir_ / "failing_command" / "rho_0.500_seed_0" / "train.log").find("refused"),
            std::string::npos);
  EXPECT_EQ(rows[2]["status"], "finished");
  const std::vector<std::string> csv = lines_of(read_file(dir_ / "failing_command" / "results.csv"));
  ASSERT_EQ(csv.size(), 4u);
  EXPECT_NE(csv[2].find(",failed,"), std::string::npos) << csv[2];
}

TEST_F(SweepCli, CommandLauncherRunsTwoAtOnceWithTheInProcessResults) {
  const fs::path in_process = write_sweep("in_process", "[0, 0.5, 1]", 8);
  ASSERT_EQ(sweep("--config '" + in_process.string() + "'").exit_code, 0);

  // Each command leaves <run_dir>.started / .ended stamps and prints its slot's device.
  const fs::path parallel = write_sweep(
      "parallel", "[0, 0.5, 1]", 8,
      "launcher { command: \"touch {run_dir}.started; echo device=${CUDA_VISIBLE_DEVICES}; {engram_train} {args} "
      "&& touch {run_dir}.ended\" max_parallel: 2 devices: [\"7\", \"9\"] }\n");
  const CommandResult r = sweep("--config '" + parallel.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::vector<json> serial = jsonl(dir_ / "in_process" / "results.jsonl");
  const std::vector<json> rows = jsonl(dir_ / "parallel" / "results.jsonl");
  ASSERT_EQ(rows.size(), 3u);
  std::map<std::string, int> devices;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i]["status"], "finished");
    EXPECT_EQ(rows[i]["val_loss"].get<double>(), serial[i]["val_loss"].get<double>()) << "rho " << rows[i]["rho"];
    EXPECT_EQ(rows[i]["final_train_loss"].get<double>(), serial[i]["final_train_loss"].get<double>());
    const fs::path run = rows[i]["run_dir"].get<std::string>();
    const std::string log = read_file(run / "train.log");
    EXPECT_NE(log.find("'" + std::string(ENGRAM_BIN_DIR) + "/engram-train' '--config' '" +
                       (run / "config.pbtxt").string() + "'"),
              std::string::npos)
        << log;
    for (const char* device : {"device=7", "device=9"}) devices[device] += log.find(device) != std::string::npos;
    EXPECT_TRUE(fs::exists(run.string() + ".ended"));
  }
  EXPECT_GE(devices["device=7"], 1);
  EXPECT_GE(devices["device=9"], 1);
  // The second point started before the first ended: two at once.
  EXPECT_LE(fs::last_write_time(dir_ / "parallel" / "rho_0.500_seed_0.started"),
            fs::last_write_time(dir_ / "parallel" / "rho_0.000_seed_0.ended"));
}

TEST_F(SweepCli, BadConfigsFailWithOneLineNamingTheField) {
  const fs::path out = dir_ / "bad";
  const auto bad = [&](const std::string& text, const std::vector<std::string>& pieces) {
    const fs::path path = dir_ / "bad.pbtxt";
    write_file_atomic(path.string(), text);
    std::vector<std::string> expected = pieces;
    expected.push_back(path.string());
    expect_one_line_error(sweep("--config '" + path.string() + "'"), expected);
    EXPECT_FALSE(fs::exists(out)) << text;
  };
  const std::string base = "base_config: \"" + base_.string() + "\"\noutput_dir: \"" + out.string() + "\"\n";
  const std::string total = "total_params: " + std::to_string(total_params_) + "\n";
  bad(base + "train_tokens: 640\n", {"total_params is required"});
  bad(base + total + "train_tokens: 640\ntrain_flops: 1e9\n", {"train_tokens or train_flops", "both"});
  bad(base + total, {"train_tokens or train_flops", "neither"});
  bad(base + total + "train_tokens: 640\nrho: [0, 1.5]\n", {"rho[1] = 1.5", "[0, 1]"});
  bad(base + total + "train_tokens: 640\nextra_rho: [0.8]\n", {"extra_rho[0] = 0.8", "repeats"});
  bad(base + total + "train_tokens: 640\nlauncher { command: \"mpirun {engram_train}\" }\n",
      {"launcher.command", "{args}"});
  bad(base + total + "train_tokens: 640\nlauncher { command: \"{engram_train} {args} --x {rank}\" }\n",
      {"launcher.command", "{rank}"});
  bad(base + total + "train_tokens: 640\nlauncher { max_parallel: 2 }\n", {"launcher.max_parallel"});
  bad(base + total + "train_tokens: 640\nlauncher { command: \"{engram_train} {args}\" max_parallel: 2 devices: [\"0\"] }\n",
      {"launcher.devices"});
  bad(base + total + "train_tokens: 640\ntotl_params: 5\n", {"totl_params", ":5:"});
  bad(base + total + "train_tokens: 640\nheldout_text: \"/no/such/file\"\n", {"heldout_text", "/no/such/file"});
  bad(base + total + "train_tokens: 640\nset: \"model.moe.top_k=9\"\n", {"base_config", base_.string(), "model.moe.top_k"});
  bad("base_config: \"" + base_.string() + "\"\n" + total + "train_tokens: 640\n", {"output_dir is required"});
  // --set works on sweep fields, with the same errors.
  const fs::path good = write_sweep("bad", "[0, 1]", 10);
  expect_one_line_error(sweep("--config '" + good.string() + "' --set total_params=-5"), {"total_params = -5"});
  expect_one_line_error(sweep("--config '" + good.string() + "' --set totl_params=5"), {"totl_params"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(SweepCli, DryRunPrintsTheAllocationAndPlannedSteps) {
  const fs::path config = write_sweep("dry", "[0.25, 1]", 1, "extra_rho: [0]\nseeds: [3, 4]\n");
  // 10 tokens more than 10 steps: the budget rounds up to 11 steps.
  const CommandResult r = sweep("--config '" + config.string() + "' --dry-run --set train_tokens=" +
                                std::to_string(10 * kTokensPerStep + 10));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "dry")) << "a dry run wrote its output directory";
  const ExperimentConfig base = load_config(base_.string());
  std::vector<std::string> lines;
  for (const std::string& line : lines_of(r.out))
    if (line.find(" new") != std::string::npos) lines.push_back(line);
  ASSERT_EQ(lines.size(), 6u) << r.out;  // seeds 3, 4 × ρ 0, 0.25, 1
  size_t k = 0;
  for (uint64_t seed : {3, 4})
    for (double rho : {0.0, 0.25, 1.0}) {
      const Allocation a = allocate(base.model(), total_params_, rho);
      std::istringstream in(lines[k++]);
      double printed_rho;
      uint64_t printed_seed;
      int64_t experts, rows, total, target, act, steps, tokens;
      double flops, peak_gib;
      std::string error;
      in >> printed_rho >> printed_seed >> experts >> rows >> total >> target >> error >> act >> steps >> tokens >>
          flops >> peak_gib;
      EXPECT_EQ(printed_rho, rho);
      EXPECT_EQ(printed_seed, seed);
      EXPECT_EQ(experts, a.routed_experts);
      EXPECT_EQ(rows, a.table_rows);
      EXPECT_EQ(total, a.total_params);
      EXPECT_EQ(target, total_params_);
      EXPECT_EQ(act, a.activated_params);
      EXPECT_EQ(steps, 11);
      EXPECT_EQ(tokens, 11 * kTokensPerStep);
      // FLOPs and memory are the planner's for the point's model (printed to 4 and 3 significant digits).
      ExperimentConfig point = base;
      *point.mutable_model() = a.model;
      const Plan plan = make_plan(point);
      EXPECT_NEAR(flops, 11 * plan.flops.per_step, 5e-4 * flops);
      EXPECT_NEAR(peak_gib, static_cast<double>(plan.memory.total()) / (1 << 30), 0.0051);
    }
  EXPECT_NE(r.out.find("peak per rank (1 rank a run) in host memory"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace engram
