// engram-train's body (launch/training_run.h): validate every input, build the model and trainer,
// loop over the steps with metrics, evaluations and checkpoints.
#include "launch/training_run.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/matmul_precision.h"
#include "model/model.h"
#include "parallel/process_groups.h"
#include "runtime/allocator.h"
#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/config/config.h"
#ifdef ENGRAM_HAVE_CUDA
#include "runtime/cuda/device.h"
#endif
#include "runtime/log.h"
#include "runtime/token_shards.h"
#include "text/compression.h"
#include "train/checkpoint.h"
#include "train/data_loader.h"
#include "train/metrics_log.h"
#include "train/trainer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::ordered_json;

// Set by SIGINT / SIGTERM; the loop stops after the step in flight. Later signals change nothing, so
// one that arrives while the checkpoint is being saved cannot cut the save short.
volatile std::sig_atomic_t g_stop_requested = 0;
extern "C" void request_stop(int) { g_stop_requested = 1; }

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The config of this run. Resuming reads the run's own config.pbtxt unless --config is given; either way
// load_checkpoint later rejects a model section that differs from the checkpoint's.
ExperimentConfig resolve_config(const TrainingOptions& options) {
  if (options.resume_dir.empty()) {
    ExperimentConfig cfg = load_config(options.config_path, options.overrides);
    EG_CHECK(!has_checkpoint(cfg.train().run_dir()), cfg.train().run_dir(),
             ": already holds a run (with a checkpoint); continue it with --resume ", cfg.train().run_dir(),
             " or choose another train.run_dir");
    return cfg;
  }
  const std::string stored = (fs::path(options.resume_dir) / "config.pbtxt").string();
  EG_CHECK(fs::is_regular_file(stored), "--resume ", options.resume_dir, ": ", stored,
           " not found (not a run directory?)");
  ExperimentConfig cfg =
      load_config(options.config_path.empty() ? stored : options.config_path, options.overrides);
  cfg.mutable_train()->set_run_dir(options.resume_dir);
  return cfg;
}

// Everything the run reads, checked against each other before any output is written.
struct TrainingData {
  std::vector<int32_t> compress;  // empty: identity (a model without Engram needs no table)
  std::optional<TrainBatches> train;
  std::vector<Batch> validation;  // empty when train.eval_every = 0
};

ShardRows read_rows(const std::string& path, const std::string& field, uint64_t tokenizer_hash,
                    const ExperimentConfig& cfg) {
  EG_CHECK(!path.empty(), field, " is required but not set");
  TokenShard shard = read_token_shard(path);
  check_shard_tokenizer(shard, tokenizer_hash, cfg.model().vocab_size());
  return ShardRows(std::move(shard), cfg.train().seq_len());
}

TrainingData load_training_data(const ExperimentConfig& cfg, const Communicator& world) {
  const config::DataConfig& d = cfg.data();
  const config::TrainConfig& t = cfg.train();
  EG_CHECK(!d.tokenizer().empty(),
           "data.tokenizer is required but not set (shards are checked against the tokenizer they were made "
           "with)");
  // Tokenizer::hash() is by definition the FNV-1a 64 of the model file bytes; no need to load it.
  const uint64_t tokenizer_hash = fnv1a64_bytes(read_file(d.tokenizer()));

  TrainingData data;
  if (!d.compression_table().empty()) {
    CompressionTable table = read_compression_table(d.compression_table());
    EG_CHECK(table.tokenizer_hash == tokenizer_hash, d.compression_table(), ": built for tokenizer hash ",
             hex64(table.tokenizer_hash), ", but data.tokenizer ", d.tokenizer(), " has hash ",
             hex64(tokenizer_hash));
    EG_CHECK(static_cast<int64_t>(table.table.size()) == cfg.model().vocab_size(), d.compression_table(),
             ": has ", table.table.size(), " entries but model.vocab_size = ", cfg.model().vocab_size());
    data.compress = std::move(table.table);
  } else {
    EG_CHECK(!has_engram(cfg.model()),
             "data.compression_table is required but not set (model.engram.layers is set: Engram hashes "
             "compressed token ids)");
  }

  const BatchLayout layout{t.global_batch_size(), t.micro_batch_size(), world.rank(), world.size()};
  data.train.emplace(read_rows(d.train_shards(), "data.train_shards", tokenizer_hash, cfg), layout, d.seed());
  if (t.eval_every() > 0) {
    const ShardRows val = read_rows(d.val_shards(), "data.val_shards", tokenizer_hash, cfg);
    const int64_t batch_rows = t.micro_batch_size() > 0 ? t.micro_batch_size() : t.global_batch_size();
    data.validation = validation_batches(val, int64_t{t.eval_batches()} * t.global_batch_size(), batch_rows);
  }
  return data;
}

struct EvalResult {
  double loss = 0.0;  // mean cross-entropy per target token
  int64_t tokens = 0;
};

EvalResult evaluate(Model& model, const std::vector<Batch>& batches) {
  double ce_sum = 0.0;
  int64_t tokens = 0;
  for (const Batch& batch : batches) {
    const ForwardStats stats = model.forward(batch);
    ce_sum += stats.ce_sum;
    tokens += stats.n_targets;
  }
  return {ce_sum / static_cast<double>(tokens), tokens};
}

// `distributed`: add the communication counters (summed over ranks, layers and micro-batches).
ordered_json train_line(const StepMetrics& m, double step_seconds, double elapsed_seconds, bool distributed) {
  ordered_json load_min = ordered_json::array(), load_max = ordered_json::array();
  ordered_json imbalance = ordered_json::array();  // max / mean load per MoE layer
  for (const std::vector<int64_t>& load : m.expert_load) {
    const int64_t max = *std::max_element(load.begin(), load.end());
    const int64_t total = std::accumulate(load.begin(), load.end(), int64_t{0});
    load_min.push_back(*std::min_element(load.begin(), load.end()));
    load_max.push_back(max);
    const double mean = static_cast<double>(total) / static_cast<double>(load.size());
    imbalance.push_back(total > 0 ? static_cast<double>(max) / mean : 1.0);
  }
  ordered_json line = {{"type", "train"},
          {"step", m.step},
          {"loss", m.loss},
          {"aux_loss", m.aux_loss},
          {"z_loss", m.z_loss},
          {"lr", static_cast<double>(m.lr)},
          {"grad_norm", m.grad_norm},
          {"tokens", m.tokens},
          {"tokens_per_s", static_cast<double>(m.tokens) / step_seconds},
          {"elapsed_s", elapsed_seconds},
          {"expert_load_min", load_min},
          {"expert_load_max", load_max},
          {"expert_load_imbalance", imbalance},
          {"engram_gate_mean", m.engram_gate_mean}};
  if (distributed) {
    line["dispatch_bytes_sent"] = m.dispatch_bytes_sent;
    line["table_bytes_sent"] = m.table_bytes_sent;
    line["table_dedup_ratio"] = m.table_dedup_ratio();
  }
  return line;
}

}  // namespace

void install_stop_handlers() {
  struct sigaction action = {};
  action.sa_handler = request_stop;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool stop_requested() { return g_stop_requested != 0; }

Device select_device(const config::RuntimeConfig& r) {
  if (r.device() == config::CPU) return Device::CPU;
#ifdef ENGRAM_HAVE_CUDA
  EG_CHECK(cuda_device_count() > 0, "runtime.device = CUDA but no CUDA device is visible to this process "
                                    "(check nvidia-smi and CUDA_VISIBLE_DEVICES, or set runtime.device = CPU)");
  kernels::set_matmul_precision(r.matmul_precision() == config::FLOAT32 ? kernels::MatmulPrecision::Float32
                                                                        : kernels::MatmulPrecision::BF16);
  device_reset_peak();
  return Device::CUDA;
#else
  EG_FAIL("runtime.device = CUDA but this build left out the CUDA backend (configure where nvcc and cuBLASLt "
          "are found, or set runtime.device = CPU)");
#endif
}

namespace {

// The tensor-core attention (head_dim 64 or 128 under bf16 matmuls) needs shared memory that some
// GPUs lack at head_dim 128; the float32 kernels then run instead, silently but for this line.
void warn_if_attention_falls_back(const ModelConfig& model, Device device) {
  const int64_t d_h = head_dim(model);
  if (device != Device::CUDA || kernels::matmul_operand_dtype(device) != DType::BF16 ||
      !kernels::tensor_core_attention_head_dim(d_h))
    return;
  if (kernels::attention_operand_dtype(device, d_h) == DType::F32)
    EG_LOG_WARN("attention at head_dim ", d_h,
                ": this GPU lacks the shared memory per block that the tensor-core "
                "kernels need, so the slower float32 attention kernels run (engram-plan's memory assumes the "
                "tensor-core ones)");
}

}  // namespace

MemoryStats device_stats(Device device) {
#ifdef ENGRAM_HAVE_CUDA
  if (device == Device::CUDA) return device_memory_stats();
#endif
  (void)device;
  return {};
}

TrainingResult run_training(const TrainingOptions& options, Communicator& world) {
  set_log_rank(world.rank());
  host_reset_peak();  // peak_host_bytes is this run's, also when a process runs several
  const bool writer = world.rank() == 0;  // the one rank that writes the run directory's files
  const ExperimentConfig cfg = resolve_config(options);
  const config::TrainConfig& t = cfg.train();
  const std::string run_dir = t.run_dir();
  const bool resuming = !options.resume_dir.empty();
  const Device device = select_device(cfg.runtime());
  // The ranks as this device's collectives need them: NCCL when every rank has its own GPU, else
  // the world moving device tensors through host copies (also on the CPU). It picks each rank's GPU,
  // so it comes before anything that makes the CUDA context (the attention check below does).
  const std::unique_ptr<Communicator> ranks = make_device_communicator(world, device);
  warn_if_attention_falls_back(cfg.model(), device);
  if (ranks->size() > 1 && device == Device::CUDA)
    EG_LOG_INFO("collectives over ", ranks->size(), " ranks: ",
                ranks->backend() == "nccl" ? "NCCL (every rank has a GPU of its own)"
                : built_with_nccl()        ? "MPI with host copies (ranks share a GPU)"
                                           : "MPI with host copies (this build has no NCCL)");
  TrainingData data = load_training_data(cfg, *ranks);
  if (writer) ensure_writable_dir(run_dir);

  // One process keeps the plain single-process model; several shard experts and tables over the groups.
  const int64_t n_experts = has_moe(cfg.model()) ? cfg.model().moe().n_routed_experts() : 0;
  ProcessGroups groups(*ranks, cfg.parallel().expert_parallel(), n_experts);
  Model model(cfg.model(), data.compress, ranks->size() > 1 ? &groups : nullptr, device);
  Trainer trainer(model, cfg.optim(), t.max_steps(), grad_bucket_bytes(cfg.parallel()));
  std::string last_checkpoint;
  if (resuming) {
    last_checkpoint = latest_checkpoint(run_dir);
    load_checkpoint(last_checkpoint, cfg, model, trainer);
    EG_LOG_INFO("resumed from ", last_checkpoint, " at step ", trainer.steps_done());
  }
  // Nothing in the run directory changes before this point, so a failed start leaves it as it was.
  std::optional<MetricsLog> metrics;
  if (writer) {
    write_file_atomic((fs::path(run_dir) / "config.pbtxt").string(), config_to_text(cfg));
    metrics.emplace((fs::path(run_dir) / "metrics.jsonl").string(), trainer.steps_done());
  }
  // Every rank stops after the same step (a signal may reach the ranks at different times).
  const auto stop_agreed = [&] {
    const int64_t stop = g_stop_requested ? 1 : 0;
    return (ranks->size() > 1 ? ranks->all_reduce_sum(stop) : stop) > 0;
  };
  int64_t saved_step = resuming ? trainer.steps_done() : -1;
  const auto save = [&] {
    last_checkpoint = save_checkpoint(run_dir, cfg, model, trainer);
    saved_step = trainer.steps_done();
  };

  install_stop_handlers();
  const int64_t max_steps = t.max_steps();
  const Clock::time_point start = Clock::now();
  int64_t log_tokens = 0;  // since the last human log line: training steps only, no eval or saving
  double log_seconds = 0.0;
  while (trainer.steps_done() < max_steps && !stop_agreed()) {
    const Clock::time_point step_start = Clock::now();
    const StepMetrics m = trainer.step(data.train->step_batches(trainer.steps_done()));
    const double step_seconds = seconds_since(step_start);
    if (writer) {
      ordered_json line = train_line(m, step_seconds, seconds_since(start), ranks->size() > 1);
      if (device == Device::CUDA) {
        const MemoryStats stats = device_stats(device);
        line["peak_device_bytes"] = stats.peak_in_use;
        line["device_blocks_returned"] = stats.returned_blocks;
      }
      metrics->write(line);
    }

    log_tokens += m.tokens;
    log_seconds += step_seconds;
    if (m.step % t.log_every() == 0 || m.step == max_steps) {
      char line[256];
      std::snprintf(line, sizeof(line),
                    "step %" PRId64 "/%" PRId64
                    " | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | elapsed %.1f s",
                    m.step, max_steps, m.loss, static_cast<double>(m.lr), m.grad_norm,
                    static_cast<double>(log_tokens) / log_seconds, seconds_since(start));
      EG_LOG_INFO(line);
      log_tokens = 0;
      log_seconds = 0.0;
    }
    if (t.eval_every() > 0 && (m.step % t.eval_every() == 0 || m.step == max_steps)) {
      const EvalResult eval = evaluate(model, data.validation);  // collective: every rank, same batches
      const MemoryStats host = host_memory_stats();
      if (writer)
        metrics->write({{"type", "eval"},
                        {"step", m.step},
                        {"val_loss", eval.loss},
                        {"val_ppl", std::exp(eval.loss)},
                        {"val_tokens", eval.tokens},
                        {"peak_host_bytes", host.peak_in_use},
                        {"host_blocks_returned", host.returned_blocks},
                        {"peak_device_bytes", device_stats(device).peak_in_use}});
      char line[160];
      std::snprintf(line, sizeof(line),
                    "eval at step %" PRId64 " | val_loss %.4f | val_ppl %.2f | %" PRId64 " tokens", m.step,
                    eval.loss, std::exp(eval.loss), eval.tokens);
      EG_LOG_INFO(line);
    }
    if (t.checkpoint_every() > 0 && m.step % t.checkpoint_every() == 0) save();
  }
  if (saved_step != trainer.steps_done()) save();
  return {run_dir, last_checkpoint, writer ? metrics->path() : std::string(), trainer.steps_done(), max_steps};
}

}  // namespace engram

