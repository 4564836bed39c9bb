// engram-train end to end, on data the test makes: a noisy repeating token pattern written as token shards,
// a stand-in tokenizer file (any bytes: its FNV-1a hash is what shards and the compression table record)
// and a compression table that merges some ids.
// - a short run lowers the training and validation loss and leaves config.pbtxt, metrics.jsonl and a
//   complete final checkpoint (checkpoints/latest, model and optimizer files), and no temporary files;
// - a run stopped by SIGTERM exits 0 with the resume hint and, resumed, ends exactly where an
//   uninterrupted run ends: metrics.jsonl equal line by line except the timing fields, model and
//   optimizer tensors bitwise equal; the same after SIGKILL, where the resume starts from an older
//   periodic checkpoint and must drop the metrics lines written after it;
// - every bad input ends with exit code 1, one line "engram-train: error: ..." naming the file or field,
//   and leaves no partial output (no temporary files, no checkpoint, files of an existing run untouched).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/config/config.h"
#include "runtime/token_shards.h"
#include "tests/test_util.h"
#include "text/compression.h"
#include "train/metrics_log.h"

extern char** environ;

namespace engram {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kVocab = 64;
constexpr int kPeriod = 13;  // the pattern the model can learn
// A single-process run writes one shard of each kind beside its manifest.json.
constexpr const char* kModelShard = "model-00000-of-00001.safetensors";
constexpr const char* kOptimizerShard = "optimizer-00000-of-00001.safetensors";

std::string step_name(int step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08d", step);
  return name;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Every regular file under `dir`, relative, with its bytes: a snapshot to compare before and after.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) files[fs::relative(entry.path(), dir).string()] = read_file(entry.path());
  return files;
}

std::vector<std::string> temp_files(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.path().filename().string().find(".tmp.") != std::string::npos)
      found.push_back(entry.path().string());
  return found;
}

// Starts engram-train with `args`, stdout and stderr both into `log`.
pid_t spawn_train(const std::vector<std::string>& args, const fs::path& log) {
  const std::string tool = std::string(ENGRAM_BIN_DIR) + "/engram-train";
  std::vector<char*> argv{const_cast<char*>(tool.c_str())};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, tool.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "cannot start " << tool << ": " << std::strerror(rc);
  return pid;
}

struct Outcome {
  int exit_code = -1;  // -1: ended by a signal
  std::string output;  // stdout and stderr
};

Outcome wait_for(pid_t pid, const fs::path& log) {
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_file(log)};
}

// The safetensors file as the public spec defines it: u64 LE header length, JSON header, raw data.
struct Safetensors {
  json tensors;  // header entries without "__metadata__"
  json metadata;
  std::string data;
};

Safetensors read_safetensors_naive(const fs::path& path) {
  const std::string bytes = read_file(path);
  EXPECT_GE(bytes.size(), 8u) << path;
  const uint64_t header_len = testing_util::read_le(bytes, 0, 8);
  Safetensors f;
  f.tensors = json::parse(bytes.substr(8, header_len));
  f.metadata = f.tensors["__metadata__"];
  f.tensors.erase("__metadata__");
  f.data = bytes.substr(8 + header_len);
  return f;
}

// A test's own directory with the data files and a config writer.
class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = dir_ / "tokenizer.model";
    write_file_atomic(tokenizer_, "a stand-in tokenizer model: only its bytes' hash matters here");
    tokenizer_hash_ = fnv1a64_bytes(read_file(tokenizer_));
    train_shard_ = dir_ / "train.bin";
    val_shard_ = dir_ / "val.bin";
    table_ = dir_ / "compression.bin";
    write_token_shard(train_shard_, pattern_tokens(6000, 1), tokenizer_hash_, kVocab, 0);
    write_token_shard(val_shard_, pattern_tokens(1200, 2), tokenizer_hash_, kVocab, 0);
    write_compression_table(table_, compression_table(), tokenizer_hash_);
  }
  void TearDown() override {
    if (HasFailure()) dir_.keep();
  }

  static std::vector<int32_t> pattern_tokens(size_t count, uint32_t seed) {
    return testing_util::noisy_pattern_tokens(count, seed, kVocab, kPeriod);
  }

  // Ids >= 48 share the compressed ids of 0..15 (dense, in order of first appearance).
  static std::vector<int32_t> compression_table() {
    std::vector<int32_t> table(kVocab);
    for (int i = 0; i < kVocab; ++i) table[i] = i < 48 ? i : i - 48;
    return table;
  }

  // A small MoE + Engram model, T = 16. `extra` is appended to the config text.
  fs::path write_config(const std::string& name, const fs::path& run_dir, int max_steps, int checkpoint_every,
                        const std::string& extra = "", int d_model = 16) const {
    std::ostringstream c;
    c << "model {\n  vocab_size: " << kVocab << "\n  d_model: " << d_model
      << "\n  n_layers: 2\n  n_heads: 2\n"
      << "  d_ff: 32\n  n_dense_layers: 1\n  seed: 5\n"
      << "  moe { n_routed_experts: 4 top_k: 2 expert_d_ff: 16 n_shared_experts: 1 bias_update_rate: 0.01 }\n"
      << "  engram { layers: [1] max_ngram: 3 heads_per_ngram: 2 head_dim: 4 table_size: [31, 37] }\n}\n"
      << "optim { lr: 1e-2 min_lr: 1e-3 warmup_steps: 5 }\n"
      << "data { train_shards: \"" << train_shard_.string() << "\" val_shards: \"" << val_shard_.string()
      << "\" tokenizer: \"" << tokenizer_.string() << "\" compression_table: \"" << table_.string()
      << "\" seed: 3 }\n"
      << "train { seq_len: 16 global_batch_size: 4 micro_batch_size: 2 max_steps: " << max_steps
      << " log_every: 10 eval_every: 10 eval_batches: 2 checkpoint_every: " << checkpoint_every
      << " run_dir: \"" << run_dir.string() << "\" }\n"
      << extra;
    const fs::path path = dir_ / name;
    write_file_atomic(path, c.str());
    return path;
  }

  Outcome train(const std::vector<std::string>& args) {
    const fs::path log = dir_ / ("log_" + std::to_string(runs_++) + ".txt");
    return wait_for(spawn_train(args, log), log);
  }

  // Exit code 1, exactly one line "engram-train: error: ..." containing every `expected` piece, and no
  // temporary file anywhere under the test directory.
  void expect_clean_failure(const Outcome& out, const std::vector<std::string>& expected) {
    EXPECT_EQ(out.exit_code, 1) << out.output;
    const std::vector<std::string> lines = lines_of(out.output);
    ASSERT_EQ(lines.size(), 1u) << out.output;
    EXPECT_EQ(lines[0].rfind("engram-train: error: ", 0), 0u) << lines[0];
    for (const std::string& piece : expected) EXPECT_NE(lines[0].find(piece), std::string::npos) << lines[0];
    EXPECT_EQ(temp_files(dir_.path()), std::vector<std::string>{});
  }

  testing_util::ScopedTempDir dir_{"test_train_cli"};
  fs::path tokenizer_, train_shard_, val_shard_, table_;
  uint64_t tokenizer_hash_ = 0;
  int runs_ = 0;
};

std::vector<json> metrics_of(const fs::path& run_dir) {
  std::vector<json> lines;
  for (const std::string& line : lines_of(read_file(run_dir / "metrics.jsonl")))
    lines.push_back(json::parse(line));
  return lines;
}

std::vector<double> series(const std::vector<json>& metrics, const std::string& type,
                           const std::string& key) {
  std::vector<double> values;
  for (const json& m : metrics)
    if (m["type"] == type) values.push_back(m[key].get<double>());
  return values;
}

double mean(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0.0;
  for (size_t i = begin; i < end; ++i) sum += v[i];
  return sum / static_cast<double>(end - begin);
}

TEST_F(TrainCli, ShortRunLowersTheLossAndWritesTheRunDirectory) {
  const fs::path run = dir_ / "run";
  const fs::path config = write_config("c.pbtxt", run, 60, 25);
  const Outcome out = train({"--config", config.string()});
  ASSERT_EQ(out.exit_code, 0) << out.output;

  const std::vector<json> metrics = metrics_of(run);
  const std::vector<double> loss = series(metrics, "train", "loss");
  const std::vector<double> val_loss = series(metrics, "eval", "val_loss");
  ASSERT_EQ(loss.size(), 60u);
  ASSERT_EQ(val_loss.size(), 6u);  // steps 10, 20, ..., 60
  EXPECT_LT(mean(loss, 55, 60), 0.6 * mean(loss, 0, 5)) << "training loss did not fall";
  EXPECT_LT(val_loss.back(), 0.6 * val_loss.front()) << "validation loss did not fall";
  for (size_t i = 0; i < metrics.size(); ++i) {
    const json& m = metrics[i];
    if (m["type"] == "eval") {
      EXPECT_EQ(m["val_tokens"], 2 * 4 * 16);
      EXPECT_DOUBLE_EQ(m["val_ppl"].get<double>(), std::exp(m["val_loss"].get<double>()));
      continue;
    }
    EXPECT_EQ(m["tokens"], 4 * 16);
    EXPECT_GT(m["tokens_per_s"].get<double>(), 0.0);
    EXPECT_EQ(m["expert_load_min"].size(), 1u);  // one MoE layer
    EXPECT_EQ(m["expert_load_max"].size(), 1u);
    EXPECT_EQ(m["engram_gate_mean"].size(), 1u);  // one Engram layer
    for (const char* key : {"loss", "aux_loss", "z_loss", "lr", "grad_norm", "elapsed_s"})
      EXPECT_TRUE(m.contains(key)) << key << " missing in line " << i;
  }
  // Steps count 1, 2, ..., each eval line right after the train line of its step.
  int64_t step = 0;
  for (const json& m : metrics) {
    if (m["type"] == "train") ++step;
    EXPECT_EQ(m["step"], step);
  }

  // The resolved config, the final checkpoint and where they are.
  EXPECT_EQ(config_to_text(parse_config_text(read_file(run / "config.pbtxt"), "config.pbtxt")),
            config_to_text(load_config(config.string())));
  EXPECT_EQ(read_file(run / "checkpoints" / "latest"), "step_00000060\n");
  for (const char* ckpt : {"step_00000025", "step_00000050", "step_00000060"})
    for (const char* file : {"manifest.json", kModelShard, kOptimizerShard})
      EXPECT_TRUE(fs::is_regular_file(run / "checkpoints" / ckpt / file)) << ckpt << "/" << file;
  EXPECT_EQ(read_safetensors_naive(run / "checkpoints/step_00000060" / kModelShard).metadata["step"], "60");
  EXPECT_EQ(temp_files(dir_.path()), std::vector<std::string>{});
  EXPECT_NE(out.output.find("run directory: " + run.string()), std::string::npos) << out.output;
  EXPECT_NE(out.output.find("last checkpoint: " + (run / "checkpoints" / "step_00000060").string()),
            std::string::npos)
      << out.output;
  EXPECT_NE(out.output.find("metrics: " + (run / "metrics.jsonl").string()), std::string::npos) << out.output;
}

// Kill-and-resume against one uninterrupted run.
class TrainCliResume : public TrainCli {
 protected:
  static constexpr int kSteps = 1000;  // long enough that the signals arrive mid-run

  // metrics.jsonl without the timing fields and the allocator's figures (a resumed process also held
  // the checkpoint it loaded), one dumped object per line.
  static std::vector<std::string> untimed_metrics(const fs::path& run) {
    std::vector<std::string> lines;
    for (json m : metrics_of(run)) {
      m.erase("tokens_per_s");
      m.erase("elapsed_s");
      m.erase("peak_host_bytes");
      m.erase("host_blocks_returned");
      lines.push_back(m.dump());
    }
    return lines;
  }

  // Same tensors bitwise and the same metadata, except the config (whose run_dir differs).
  static void expect_same_checkpoint_file(const fs::path& a, const fs::path& b) {
    Safetensors fa = read_safetensors_naive(a), fb = read_safetensors_naive(b);
    EXPECT_EQ(fa.tensors, fb.tensors) << a << " vs " << b;
    EXPECT_TRUE(fa.data == fb.data) << a << " and " << b << ": tensor data differs";
    fa.metadata.erase("config");
    fb.metadata.erase("config");
    EXPECT_EQ(fa.metadata, fb.metadata) << a << " vs " << b;
  }

  void expect_same_run(const fs::path& a, const fs::path& b) {
    const std::vector<std::string> ma = untimed_metrics(a), mb = untimed_metrics(b);
    ASSERT_EQ(ma.size(), mb.size());
    for (size_t i = 0; i < ma.size(); ++i)
      if (ma[i] != mb[i]) {  // the first difference tells the story; the rest would follow from it
        ADD_FAILURE() << "metrics.jsonl line " << i + 1 << " differs:\n  uninterrupted: " << ma[i]
                      << "\n  resumed:       " << mb[i];
        break;
      }
    const std::string last = "checkpoints/" + step_name(kSteps);
    for (const char* file : {kModelShard, kOptimizerShard})
      expect_same_checkpoint_file(a / last / file, b / last / file);
  }

  // Starts a run, waits until metrics.jsonl has `lines` lines, sends `sig`; returns how it ended.
  Outcome interrupt_after(const fs::path& config, const fs::path& run, size_t lines, int sig) {
    const fs::path log = dir_ / ("interrupted_" + std::to_string(sig) + ".txt");
    const pid_t pid = spawn_train({"--config", config.string()}, log);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    const fs::path metrics = run / "metrics.jsonl";  // appears once the run has started
    while ((fs::exists(metrics) ? lines_of(read_file(metrics)).size() : 0) < lines &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    kill(pid, sig);
    return wait_for(pid, log);
  }

  // The uninterrupted reference run directory, made once for the suite.
  fs::path uninterrupted() {
    if (!reference_dir_) {
      reference_dir_ = std::make_unique<testing_util::ScopedTempDir>("test_train_cli_reference");
      const Outcome out =
          train({"--config", write_config("ref.pbtxt", *reference_dir_ / "run", kSteps, 150).string()});
      EXPECT_EQ(out.exit_code, 0) << out.output;
    }
    return *reference_dir_ / "run";
  }
  static void SetUpTestSuite() { reference_dir_.reset(); }
  static void TearDownTestSuite() { reference_dir_.reset(); }

  static inline std::unique_ptr<testing_util::ScopedTempDir> reference_dir_;
};

TEST_F(TrainCliResume, SigtermSavesAndResumeEqualsUninterrupted) {
  const fs::path reference = uninterrupted();
  const fs::path run = dir_ / "run";
  const fs::path config = write_config("c.pbtxt", run, kSteps, 150);
  const Outcome stopped = interrupt_after(config, run, 40, SIGTERM);
  ASSERT_EQ(stopped.exit_code, 0) << stopped.output;
  const std::string latest = read_file(run / "checkpoints" / "latest");
  const int step = std::stoi(latest.substr(5));
  ASSERT_EQ(latest, step_name(step) + "\n");
  ASSERT_LT(step, kSteps) << "the run ended before SIGTERM arrived";
  EXPECT_NE(stopped.output.find("interrupted at step " + std::to_string(step) + "; checkpoint saved to " +
                                (run / "checkpoints" / step_name(step)).string() + "; resume with --resume " +
                                run.string()),
            std::string::npos)
      << stopped.output;

  const Outcome resumed = train({"--resume", run.string()});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_run(reference, run);
  EXPECT_EQ(temp_files(dir_.path()), std::vector<std::string>{});
}

TEST_F(TrainCliResume, SigkillThenResumeFromAnOlderCheckpointEqualsUninterrupted) {
  const fs::path reference = uninterrupted();
  const fs::path run = dir_ / "run";
  const fs::path config = write_config("c.pbtxt", run, kSteps, 50);
  const Outcome killed = interrupt_after(config, run, 150, SIGKILL);
  ASSERT_EQ(killed.exit_code, -1) << "the run ended before SIGKILL arrived: " << killed.output;
  ASSERT_TRUE(fs::exists(run / "checkpoints" / "latest"));

  // The resumed run uses --config (same model section; checkpoint_every differs, which is allowed).
  const Outcome resumed = train({"--resume", run.string(), "--config", config.string()});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_run(reference, run);
}

// What a resume does to metrics.jsonl: lines after the checkpoint's step go (eval lines of that step
// stay), a half-written last line goes, and appending continues after what is kept.
TEST_F(TrainCli, MetricsLogResumeKeepsLinesThroughTheCheckpointStep) {
  const fs::path path = dir_ / "metrics.jsonl";
  write_file_atomic(
      path,
      "{\"type\":\"train\",\"step\":1}\n{\"type\":\"train\",\"step\":2}\n{\"type\":\"eval\",\"step\":2}\n"
      "{\"type\":\"train\",\"step\":3}\n{\"type\":\"train\",\"st");
  {
    MetricsLog log(path.string(), 2);
    log.write({{"type", "train"}, {"step", 3}, {"loss", 0.5}});
    EXPECT_EQ(
        read_file(path),
        "{\"type\":\"train\",\"step\":1}\n{\"type\":\"train\",\"step\":2}\n{\"type\":\"eval\",\"step\":2}\n"
        "{\"type\":\"train\",\"step\":3,\"loss\":0.5}\n")
        << "not flushed per line, or not truncated";
  }
  { MetricsLog fresh(path.string(), 0); }
  EXPECT_EQ(read_file(path), "");
  EXPECT_EQ(temp_files(dir_.path()), std::vector<std::string>{});
}

// ---- bad inputs ----

TEST_F(TrainCli, UnknownConfigFieldFails) {
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0, "parallel { expert_paralel: 2 }\n");
  expect_clean_failure(train({"--config", config.string()}), {config.string(), "expert_paralel"});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, OutOfRangeValueFails) {
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  expect_clean_failure(train({"--config", config.string(), "--set", "model.moe.top_k=5"}),
                       {config.string(), "model.moe.top_k = 5"});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, MissingArgumentsFail) {
  expect_clean_failure(train({}), {"--config", "--resume"});
  expect_clean_failure(train({"--config"}), {"--config"});
}

// srun without --mpi=pmix starts its tasks outside any MPI world: each would train alone.
TEST_F(TrainCli, TasksOfALauncherOutsideOneWorldFail) {
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  ASSERT_EQ(setenv("SLURM_STEP_NUM_TASKS", "3", 1), 0);
  const Outcome three_tasks = train({"--config", config.string()});
  const bool run_dir_made = fs::exists(dir_ / "run");
  ASSERT_EQ(setenv("SLURM_STEP_NUM_TASKS", "1", 1), 0);
  const Outcome one_task = train({"--config", config.string()});
  unsetenv("SLURM_STEP_NUM_TASKS");
  expect_clean_failure(three_tasks, {"SLURM_STEP_NUM_TASKS = 3", "world of one"});
  EXPECT_FALSE(run_dir_made);
  EXPECT_EQ(one_task.exit_code, 0) << one_task.output;
}

TEST_F(TrainCli, MissingShardFails) {
  const fs::path missing = dir_ / "no_such_shard.bin";
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  expect_clean_failure(
      train({"--config", config.string(), "--set", "data.train_shards=\"" + missing.string() + "\""}),
      {missing.string()});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, TruncatedShardFails) {
  const std::string bytes = read_file(val_shard_);
  write_file_atomic(val_shard_, bytes.substr(0, bytes.size() - 3));
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  expect_clean_failure(train({"--config", config.string()}), {val_shard_.string(), "truncated"});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, ShardOfAnotherTokenizerFails) {
  write_token_shard(train_shard_, pattern_tokens(600, 1), tokenizer_hash_ ^ 1, kVocab, 0);
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  expect_clean_failure(train({"--config", config.string()}), {train_shard_.string(), "different tokenizer"});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, CompressionTableOfAnotherTokenizerFails) {
  write_compression_table(table_, compression_table(), tokenizer_hash_ ^ 1);
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  expect_clean_failure(train({"--config", config.string()}), {table_.string(), tokenizer_.string()});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, ShardTooSmallForOneRowFails) {
  write_token_shard(val_shard_, pattern_tokens(10, 2), tokenizer_hash_, kVocab, 0);
  const fs::path config = write_config("c.pbtxt", dir_ / "run", 5, 0);
  expect_clean_failure(train({"--config", config.string()}), {val_shard_.string(), "10 tokens", "17"});
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(TrainCli, UnwritableRunDirectoryFails) {
  write_file_atomic(dir_ / "a_file", "not a directory");
  const fs::path run = dir_ / "a_file" / "run";
  const fs::path config = write_config("c.pbtxt", run, 5, 0);
  expect_clean_failure(train({"--config", config.string()}), {run.string()});
}

// A finished 5-step run, then inputs that must not touch it.
TEST_F(TrainCli, BadResumesLeaveTheRunUntouched) {
  const fs::path run = dir_ / "run";
  const fs::path config = write_config("c.pbtxt", run, 5, 0);
  ASSERT_EQ(train({"--config", config.string()}).exit_code, 0);

  // Starting afresh over an existing run.
  std::map<std::string, std::string> before = snapshot(run);
  expect_clean_failure(train({"--config", config.string()}), {run.string(), "--resume"});
  EXPECT_EQ(snapshot(run), before);

  // A checkpoint of another config (d_model 24 instead of 16).
  const fs::path other = write_config("other.pbtxt", run, 5, 0, "", 24);
  expect_clean_failure(train({"--resume", run.string(), "--config", other.string()}),
                       {"manifest.json", "model.d_model"});
  EXPECT_EQ(snapshot(run), before);
  expect_clean_failure(train({"--resume", run.string(), "--set", "model.d_model=24"}),
                       {"manifest.json", "model.d_model"});
  EXPECT_EQ(snapshot(run), before);

  // A corrupt checkpoint: one flipped byte in the tensor data.
  const fs::path model_file = run / "checkpoints" / "step_00000005" / kModelShard;
  std::string bytes = read_file(model_file);
  bytes[bytes.size() - 5] ^= 0x10;
  write_file_atomic(model_file, bytes);
  before = snapshot(run);
  expect_clean_failure(train({"--resume", run.string()}), {model_file.string()});
  EXPECT_EQ(snapshot(run), before);

  // No checkpoint at all.
  fs::remove_all(run / "checkpoints");
  before = snapshot(run);
  expect_clean_failure(train({"--resume", run.string()}), {run.string(), "no checkpoint"});
  EXPECT_EQ(snapshot(run), before);
}

}  // namespace
}  // namespace engram
