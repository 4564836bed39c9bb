// Checkpoints (train/checkpoint.h, runtime/safetensors.h, docs/CHECKPOINT.md) on a tiny MoE + Engram
// model with a non-identity compression table:
// - save -> load into fresh objects restores parameters, moments, balancing biases and the step
//   bitwise (the loss of a batch is bitwise the same); 3 steps + save + load + 2 steps equals 5
//   uninterrupted steps bitwise (resume);
// - a flipped data byte fails with "checksum" and the file name; truncated files, a checkpoint of
//   another config (naming the field), another compression table, a missing or misshapen tensor all
//   fail clearly and leave the model untouched; `latest` names the newest; an uncommitted write
//   leaves no file;
// - the sharded layout: the manifest tiles every tensor and records each shard's CRC; a manifest that
//   does not tile, or a shard of another checkpoint, is refused; the exported consolidated layout
//   loads to the same state and evaluates to the same tensors;
// - the exported file is standard safetensors: an independent parser here reads the header and the floats;
//   hand-written malformed files are refused; the Python script of docs/CHECKPOINT.md reproduces the
//   model's tensors and Engram rows.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/ngram_hash.h"
#include "runtime/atomic_file.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"
#include "tests/training_state.h"
#include "train/checkpoint.h"
#include "train/checkpoint_manifest.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing_util::bitwise_equal;
using testing_util::checkpoint_state;
using testing_util::expect_error;
using testing_util::expect_same_checkpoint_state;
using testing_util::expect_same_steps;
using testing_util::read_le;
using testing_util::same_double_bits;

constexpr int kVocab = 29, kSeq = 7, kCompressedVocab = 19;

ExperimentConfig tiny_config() {
  ExperimentConfig cfg;
  ModelConfig& m = *cfg.mutable_model();
  m.set_vocab_size(kVocab);
  m.set_d_model(12);
  m.set_n_heads(2);
  m.set_n_layers(3);
  m.set_n_dense_layers(1);
  m.set_d_ff(20);
  m.set_seed(5);
  auto& moe = *m.mutable_moe();
  moe.set_n_routed_experts(4);
  moe.set_top_k(2);
  moe.set_expert_d_ff(8);
  moe.set_n_shared_experts(1);
  moe.set_bias_update_rate(0.01f);
  auto& engram = *m.mutable_engram();
  engram.add_layers(0);
  engram.add_layers(2);
  engram.set_max_ngram(3);
  engram.set_heads_per_ngram(2);
  engram.set_head_dim(4);
  engram.add_table_size(13);
  engram.add_table_size(17);
  auto& optim = *cfg.mutable_optim();
  optim.set_lr(1e-2f);
  optim.set_min_lr(1e-3f);
  optim.set_warmup_steps(2);
  cfg.mutable_data()->set_seed(77);
  cfg.mutable_train()->set_max_steps(10);
  return cfg;
}

// Dense but not the identity: raw ids 19..28 share compressed ids with 0..9.
std::vector<int32_t> compression() {
  std::vector<int32_t> c(kVocab);
  for (int i = 0; i < kVocab; ++i) c[i] = i % kCompressedVocab;
  return c;
}

struct TrainingRun {
  explicit TrainingRun(const ExperimentConfig& cfg, std::vector<int32_t> compress = compression())
      : model(cfg.model(), std::move(compress)), trainer(model, cfg.optim(), cfg.train().max_steps()) {}
  Model model;
  Trainer trainer;
};

Batch random_batch(int64_t rows, std::mt19937& rng) {
  return testing_util::random_batch<Batch>(rows, kSeq, kVocab, rng);
}

// The global batch of step s: a function of s alone, as the data loader's order is.
std::vector<Batch> batches_of_step(int64_t step) {
  std::mt19937 rng(1000 + static_cast<unsigned>(step));
  Batch a = random_batch(2, rng);
  Batch b = random_batch(1, rng);
  return {a, b};
}

std::vector<StepMetrics> train(TrainingRun& run, int steps) {
  std::vector<StepMetrics> out;
  for (int i = 0; i < steps; ++i) out.push_back(run.trainer.step(batches_of_step(run.trainer.steps_done())));
  return out;
}

double eval_loss(TrainingRun& run) {
  std::mt19937 rng(4242);
  return run.model.forward(random_batch(3, rng)).ce_sum;
}

std::map<std::string, std::vector<float>> snapshot(TrainingRun& run) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, t] : checkpoint_state(run.model, run.trainer)) out[name] = t.to_vector<float>();
  return out;
}

void expect_same_state(const TrainingRun& a, const TrainingRun& b) {
  expect_same_checkpoint_state(a.model, a.trainer, b.model, b.trainer);
}

// A safetensors file's first 8 bytes: the length of the JSON header that follows.
uint64_t header_length(const std::string& bytes) { return read_le(bytes, 0, 8); }

class CheckpointTest : public ::testing::Test {
 protected:
  std::string run_dir() const { return (root_ / "run").string(); }
  std::string path(const std::string& name) const { return (root_ / name).string(); }
  // A single process writes one shard of each kind.
  static std::string shard(const std::string& dir, const char* kind) {
    return (fs::path(dir) / (std::string(kind) + "-00000-of-00001.safetensors")).string();
  }
  static std::string manifest(const std::string& dir) { return (fs::path(dir) / "manifest.json").string(); }
  // The consolidated layout of `dir` (engram-export), in <root>/<name>.
  std::string exported(const std::string& dir, const std::string& name) {
    export_consolidated(dir, path(name), /*with_optimizer=*/true);
    return path(name);
  }

  // A run trained `steps` steps and saved; returns the checkpoint directory.
  std::string trained_checkpoint(int steps) {
    TrainingRun run(cfg_);
    train(run, steps);
    return save_checkpoint(run_dir(), cfg_, run.model, run.trainer);
  }

  const testing_util::ScopedTempDir root_{"test_checkpoint"};
  const ExperimentConfig cfg_ = tiny_config();
};

TEST_F(CheckpointTest, SaveThenLoadRestoresParametersMomentsAndStepBitwise) {
  TrainingRun a(cfg_);
  train(a, 2);
  const std::string dir = save_checkpoint(run_dir(), cfg_, a.model, a.trainer);
  EXPECT_EQ(dir, (fs::path(run_dir()) / "checkpoints" / "step_00000002").string());

  // The state is worth restoring: balancing biases moved, table moments are non-zero.
  const std::vector<float> bias = a.model.params().get("layers.1.moe.router.bias").value.to_vector<float>();
  EXPECT_TRUE(std::any_of(bias.begin(), bias.end(), [](float b) { return b != 0.0f; }));
  const std::vector<float> table_v =
      a.trainer.sparse_adam().state().at("layers.2.engram.table").v.to_vector<float>();
  EXPECT_TRUE(std::any_of(table_v.begin(), table_v.end(), [](float v) { return v != 0.0f; }));

  TrainingRun b(cfg_);
  ASSERT_FALSE(same_double_bits(eval_loss(a), eval_loss(b)));  // fresh weights differ
  load_checkpoint(dir, cfg_, b.model, b.trainer);
  expect_same_state(a, b);
  EXPECT_EQ(b.trainer.steps_done(), 2);
  EXPECT_TRUE(same_double_bits(eval_loss(a), eval_loss(b)));
}

TEST_F(CheckpointTest, ResumeEqualsUninterruptedRunBitwise) {
  TrainingRun uninterrupted(cfg_);
  const std::vector<StepMetrics> expected = train(uninterrupted, 5);

  {
    TrainingRun first(cfg_);
    train(first, 3);
    save_checkpoint(run_dir(), cfg_, first.model, first.trainer);
  }
  TrainingRun resumed(cfg_);
  load_checkpoint(latest_checkpoint(run_dir()), cfg_, resumed.model, resumed.trainer);
  const std::vector<StepMetrics> got = train(resumed, 2);

  expect_same_steps(got, expected, 3);
  expect_same_state(uninterrupted, resumed);
}

TEST_F(CheckpointTest, FlippedDataByteFailsWithChecksumErrorNamingTheFile) {
  const std::string dir = trained_checkpoint(1);
  for (const char* kind : {"model", "optimizer"}) {
    const std::string file = shard(dir, kind);
    const std::string good = read_file(file);
    std::string bad = good;
    const size_t data_begin = 8 + header_length(good);
    bad[data_begin + (bad.size() - data_begin) / 2] ^= 0x10;
    write_file_atomic(file, bad);
    TrainingRun run(cfg_);
    expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); }, {file, "checksum"});
    write_file_atomic(file, good);
    load_checkpoint(dir, cfg_, run.model, run.trainer);  // the flip, nothing else, was the problem
  }
}

TEST_F(CheckpointTest, TruncatedFileFailsClearly) {
  const std::string dir = trained_checkpoint(1);
  const std::string file = shard(dir, "model");
  const std::string good = read_file(file);
  const size_t header_end = 8 + header_length(good);
  for (size_t size : {good.size() - 1, header_end + 3, header_end - 5, size_t{5}, size_t{0}}) {
    write_file_atomic(file, good.substr(0, size));
    TrainingRun run(cfg_);
    expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); }, {file, "truncated"});
  }
}

TEST_F(CheckpointTest, CheckpointOfAnotherConfigNamesTheFirstDifferingField) {
  const std::string dir = trained_checkpoint(1);
  const std::string file = manifest(dir);

  ExperimentConfig wider = cfg_;
  wider.mutable_model()->set_d_model(16);
  TrainingRun wide(wider);
  expect_error([&] { load_checkpoint(dir, wider, wide.model, wide.trainer); },
               {file, "another config", "model.d_model", "12", "16"});

  ExperimentConfig bigger_table = cfg_;
  bigger_table.mutable_model()->mutable_engram()->set_table_size(1, 19);
  TrainingRun big(bigger_table);
  expect_error([&] { load_checkpoint(dir, bigger_table, big.model, big.trainer); },
               {file, "model.engram.table_size", "[13, 17]", "[13, 19]"});

  // Values are compared, not presence: spelling out a default is the same config.
  ExperimentConfig explicit_defaults = cfg_;
  explicit_defaults.mutable_model()->set_norm_eps(1e-6f);
  explicit_defaults.mutable_model()->mutable_engram()->set_pad_id(-1);
  TrainingRun same(explicit_defaults);
  load_checkpoint(dir, explicit_defaults, same.model, same.trainer);
  EXPECT_EQ(same.trainer.steps_done(), 1);
}

TEST_F(CheckpointTest, AnotherCompressionTableIsRefused) {
  const std::string dir = trained_checkpoint(1);
  std::vector<int32_t> other = compression();
  std::swap(other[3], other[4]);
  TrainingRun run(cfg_, other);
  expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); },
               {"manifest.json", "compression table", "raw id 3"});
}

// On the consolidated layout, where a tensor file can be edited without breaking a manifest's CRC.
TEST_F(CheckpointTest, MissingOrMisshapenTensorIsNamedAndNothingIsOverwritten) {
  const std::string dir = exported(trained_checkpoint(2), "consolidated");
  // Rewrites checkpoint file `name` without tensor `dropped` (or with `replacement` in its place).
  const auto rewrite_without = [&](const std::string& name, const std::string& dropped,
                                   const Tensor* replacement) {
    const std::string file = (fs::path(dir) / name).string();
    SafetensorsFile f = read_safetensors(file);
    NamedTensors kept;
    for (const auto& [tensor_name, t] : f.tensors)
      if (tensor_name != dropped) kept.emplace_back(tensor_name, t);
    if (replacement) kept.emplace_back(dropped, *replacement);
    f.metadata.erase("crc32");
    write_safetensors(file, kept, f.metadata);
    return file;
  };
  const std::string model_file = (fs::path(dir) / "model.safetensors").string();
  const std::string model_bytes = read_file(model_file);

  TrainingRun run(cfg_);
  const auto before = snapshot(run);
  const std::string file = rewrite_without("model.safetensors", "layers.2.engram.table", nullptr);
  expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); },
               {file, "layers.2.engram.table", "missing"});

  write_file_atomic(model_file, model_bytes);
  const Tensor wrong = Tensor::zeros({13});
  rewrite_without("model.safetensors", "norm.weight", &wrong);
  expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); }, {"norm.weight", "[13]", "[12]"});
  write_file_atomic(model_file, model_bytes);

  // The model file is fine; the optimizer file fails after it was read: still nothing is overwritten.
  const std::string opt =
      rewrite_without("optimizer.safetensors", "sparse_adam.v.layers.0.engram.table", nullptr);
  expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); },
               {opt, "sparse_adam.v.layers.0.engram.table", "missing"});
  EXPECT_EQ(snapshot(run), before);
  EXPECT_EQ(run.trainer.steps_done(), 0);
}

// ---- the sharded layout: manifest, shard files, export ----

TEST_F(CheckpointTest, ManifestTilesEveryTensorWithItsShardFilesAndTheirChecksums) {
  TrainingRun run(cfg_);
  train(run, 1);
  const std::string dir = save_checkpoint(run_dir(), cfg_, run.model, run.trainer);
  const CheckpointManifest m = parse_manifest(read_file(manifest(dir)), manifest(dir));
  EXPECT_EQ(m.step, 1);
  EXPECT_EQ(m.world_size, 1);
  ASSERT_EQ(m.model.size(), run.model.params().all().size());
  for (size_t i = 0; i < m.model.size(); ++i) {
    const Parameter* p = run.model.params().all()[i];  // registry order
    EXPECT_EQ(m.model[i].name, p->name);
    EXPECT_EQ(m.model[i].shape, p->global_shape);
    ASSERT_EQ(m.model[i].pieces.size(), 1u) << p->name;  // one rank holds every row
    EXPECT_EQ(m.model[i].pieces[0].file, "model-00000-of-00001.safetensors");
  }
  for (const auto& [file, crc] : m.file_crc32) {
    const SafetensorsFile f = read_safetensors((fs::path(dir) / file).string());
    EXPECT_EQ(f.metadata.at("crc32"), std::to_string(crc)) << file;
  }
  EXPECT_EQ(m.file_crc32.size(), 2u);
}

TEST_F(CheckpointTest, ManifestThatDoesNotTileATensorIsRefused) {
  const std::string dir = trained_checkpoint(1);
  const std::string good = read_file(manifest(dir));
  // Edits the "rows" of the first piece of tensor `name` in the manifest's text.
  const auto with_rows = [&](const std::string& name, int64_t rows) {
    json m = json::parse(good);
    for (json& t : m["model"])
      if (t["name"] == name) t["pieces"][0]["rows"] = rows;
    return m.dump();
  };
  TrainingRun run(cfg_);
  for (int64_t rows : {11, 13, 0}) {
    write_file_atomic(manifest(dir), with_rows("norm.weight", rows));
    expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); },
                 {manifest(dir), "norm.weight", "rows"});
  }
  json m = json::parse(good);
  m["files"].erase("optimizer-00000-of-00001.safetensors");
  write_file_atomic(manifest(dir), m.dump());
  expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); },
               {manifest(dir), "optimizer-00000-of-00001.safetensors", "not listed"});
  write_file_atomic(manifest(dir), "{\"format\": \"something else\"}");
  expect_error([&] { load_checkpoint(dir, cfg_, run.model, run.trainer); }, {manifest(dir), "format"});
  write_file_atomic(manifest(dir), good);
  load_checkpoint(dir, cfg_, run.model, run.trainer);
}

TEST_F(CheckpointTest, ShardFileOfAnotherCheckpointIsRefusedAndNothingIsOverwritten) {
  TrainingRun a(cfg_);
  train(a, 1);
  const std::string first = save_checkpoint(run_dir(), cfg_, a.model, a.trainer);
  train(a, 1);
  const std::string second = save_checkpoint(run_dir(), cfg_, a.model, a.trainer);
  // A valid safetensors file, but not the one the second manifest was written with.
  fs::copy_file(shard(first, "optimizer"), shard(second, "optimizer"), fs::copy_options::overwrite_existing);
  TrainingRun b(cfg_);
  const auto before = snapshot(b);
  expect_error([&] { load_checkpoint(second, cfg_, b.model, b.trainer); },
               {shard(second, "optimizer"), "CRC-32", "another checkpoint"});
  EXPECT_EQ(snapshot(b), before);
}

TEST_F(CheckpointTest, ExportedConsolidatedCheckpointLoadsToTheSameStateAndResumes) {
  TrainingRun a(cfg_);
  train(a, 2);
  const std::string dir = save_checkpoint(run_dir(), cfg_, a.model, a.trainer);
  const std::string consolidated = exported(dir, "consolidated");
  EXPECT_TRUE(fs::exists(fs::path(consolidated) / "model.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(consolidated) / "optimizer.safetensors"));

  TrainingRun from_shards(cfg_), from_export(cfg_);
  load_checkpoint(dir, cfg_, from_shards.model, from_shards.trainer);
  load_checkpoint(consolidated, cfg_, from_export.model, from_export.trainer);
  expect_same_state(from_shards, from_export);
  expect_same_state(a, from_export);
  EXPECT_EQ(from_export.trainer.steps_done(), 2);

  // Evaluation reads either layout to the same tensors.
  const CheckpointInfo sharded = read_checkpoint_info(dir);
  const CheckpointInfo file = read_checkpoint_info((fs::path(consolidated) / "model.safetensors").string());
  EXPECT_EQ(sharded.step, 2);
  EXPECT_EQ(sharded.compression_table, file.compression_table);
  EXPECT_EQ(config_to_text(sharded.config), config_to_text(file.config));
  ASSERT_EQ(sharded.file.tensors.size(), file.file.tensors.size());
  for (const auto& [name, t] : file.file.tensors) EXPECT_TRUE(bitwise_equal(t, sharded.file.tensors.at(name))) << name;

  // Without --optimizer only the model is written.
  export_consolidated(dir, path("model_only"), /*with_optimizer=*/false);
  EXPECT_TRUE(fs::exists(path("model_only") + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(path("model_only") + "/optimizer.safetensors"));
  expect_error([&] { export_consolidated(path("nothing_here"), path("x"), true); }, {"nothing_here"});
}

TEST_F(CheckpointTest, LatestNamesTheNewestCheckpoint) {
  expect_error([&] { latest_checkpoint(run_dir()); }, {run_dir(), "no checkpoint"});
  TrainingRun run(cfg_);
  train(run, 1);
  const std::string first = save_checkpoint(run_dir(), cfg_, run.model, run.trainer);
  EXPECT_EQ(latest_checkpoint(run_dir()), first);
  train(run, 1);
  const std::string second = save_checkpoint(run_dir(), cfg_, run.model, run.trainer);
  EXPECT_NE(first, second);
  EXPECT_EQ(latest_checkpoint(run_dir()), second);
  EXPECT_EQ(read_file((fs::path(run_dir()) / "checkpoints" / "latest").string()), "step_00000002\n");
  EXPECT_TRUE(fs::exists(manifest(first)));  // older checkpoints stay

  TrainingRun loaded(cfg_);
  load_checkpoint(latest_checkpoint(run_dir()), cfg_, loaded.model, loaded.trainer);
  EXPECT_EQ(loaded.trainer.steps_done(), 2);
}

TEST_F(CheckpointTest, OnlyTheNewestKeepCheckpointsRemain) {
  for (int keep : {0, 2}) {
    ExperimentConfig cfg = cfg_;
    cfg.mutable_train()->set_keep_checkpoints(keep);
    const std::string dir = path("keep_" + std::to_string(keep));
    TrainingRun run(cfg);
    std::vector<std::string> saved;
    for (int i = 0; i < 4; ++i) {
      train(run, 1);
      saved.push_back(save_checkpoint(dir, cfg, run.model, run.trainer));
    }
    for (int i = 0; i < 4; ++i) {
      const bool kept = keep == 0 || i >= 4 - keep;
      EXPECT_EQ(fs::exists(saved[i]), kept) << "keep " << keep << ", checkpoint " << saved[i];
    }
    EXPECT_EQ(latest_checkpoint(dir), saved.back());
    TrainingRun loaded(cfg);
    load_checkpoint(latest_checkpoint(dir), cfg, loaded.model, loaded.trainer);
    EXPECT_EQ(loaded.trainer.steps_done(), 4);
  }
}

TEST_F(CheckpointTest, InterruptedWriteLeavesNoPartialFile) {
  const std::string file = path("model.safetensors");
  {
    AtomicFile f(file);
    f.write("partial header");
  }  // destroyed without commit, as by an exception or a signal handler unwinding
  EXPECT_FALSE(fs::exists(file));
  EXPECT_TRUE(fs::is_empty(root_.path()));

  write_safetensors(file, {{"x", Tensor::full({3}, 1.5f)}}, {});
  const std::string committed = read_file(file);
  {
    AtomicFile f(file);
    f.write("an interrupted rewrite");
  }
  EXPECT_EQ(read_file(file), committed);  // the previous complete file is untouched
  EXPECT_EQ(std::distance(fs::directory_iterator(root_.path()), fs::directory_iterator()), 1);
}

// The exported format is standard: parsed here by hand, without runtime/safetensors.
TEST_F(CheckpointTest, ModelFileIsStandardSafetensors) {
  TrainingRun run(cfg_);
  train(run, 2);
  const std::string dir = exported(save_checkpoint(run_dir(), cfg_, run.model, run.trainer), "consolidated");
  const std::string bytes = read_file((fs::path(dir) / "model.safetensors").string());
  const uint64_t n = header_length(bytes);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ(n % 8, 0u);  // data section aligned
  const json header = json::parse(bytes.substr(8, n));
  const char* data = bytes.data() + 8 + n;
  const uint64_t data_bytes = bytes.size() - 8 - n;

  // Every parameter, nothing else, f32 with its global shape, tiling the data section.
  std::set<std::string> names;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const Parameter* p : run.model.params().all()) {
    names.insert(p->name);
    ASSERT_TRUE(header.contains(p->name)) << p->name;
    const json& e = header[p->name];
    EXPECT_EQ(e["dtype"], "F32") << p->name;
    EXPECT_EQ(e["shape"].get<Shape>(), p->global_shape) << p->name;
    const uint64_t begin = e["data_offsets"][0], end = e["data_offsets"][1];
    EXPECT_EQ(end - begin, p->global_numel() * sizeof(float)) << p->name;
    ranges.emplace_back(begin, end);
    std::vector<float> values(p->global_numel());
    std::memcpy(values.data(), data + begin, end - begin);
    EXPECT_EQ(values, p->value.to_vector<float>()) << p->name;
  }
  EXPECT_EQ(header.size(), names.size() + 1);  // + __metadata__
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (const auto& [begin, end] : ranges) {
    EXPECT_EQ(begin, at);
    at = end;
  }
  EXPECT_EQ(at, data_bytes);

  const json& meta = header["__metadata__"];
  EXPECT_EQ(meta["format"], "engram-checkpoint-v1");
  EXPECT_EQ(meta["step"], "2");
  EXPECT_EQ(meta["data_seed"], "77");
  EXPECT_EQ(meta["vocab_compressed"], std::to_string(kCompressedVocab));
  EXPECT_EQ(meta["crc32"], std::to_string(::crc32(0L, reinterpret_cast<const Bytef*>(data), data_bytes)));
  EXPECT_EQ(json::parse(meta["compression_table"].get<std::string>()).get<std::vector<int32_t>>(),
            compression());
  EXPECT_EQ(config_to_text(parse_config_text(meta["config"].get<std::string>(), "metadata")),
            config_to_text(cfg_));
  const json hashing = json::parse(meta["engram_hashing"].get<std::string>());
  const auto& plans = run.model.engram_hashing();
  ASSERT_EQ(hashing.size(), 2u);
  for (size_t i = 0; i < plans.size(); ++i) {
    EXPECT_EQ(hashing[i]["layer"], cfg_.model().engram().layers(i));
    std::vector<std::string> multipliers;
    for (uint64_t m : plans[i].multipliers) multipliers.push_back(std::to_string(m));
    EXPECT_EQ(hashing[i]["multipliers"].get<std::vector<std::string>>(), multipliers);
    EXPECT_EQ(hashing[i]["primes"].get<std::vector<int64_t>>(), plans[i].primes);
    EXPECT_EQ(hashing[i]["offsets"].get<std::vector<int64_t>>(), plans[i].offsets);
    EXPECT_EQ(hashing[i]["rows"], plans[i].rows);
  }

  // The optimizer file: moments of AdamW's groups, of SparseAdam's tables, none for balancing biases.
  const std::string opt = read_file((fs::path(dir) / "optimizer.safetensors").string());
  const json opt_header = json::parse(opt.substr(8, header_length(opt)));
  std::set<std::string> expected_moments, got_moments;
  for (const Parameter* p : run.model.params().all()) {
    if (p->group == OptimGroup::NotTrained) continue;
    const std::string prefix = p->group == OptimGroup::SparseTable ? "sparse_adam" : "adamw";
    expected_moments.insert(prefix + ".m." + p->name);
    expected_moments.insert(prefix + ".v." + p->name);
  }
  for (const auto& [name, e] : opt_header.items())
    if (name != "__metadata__") got_moments.insert(name);
  EXPECT_EQ(got_moments, expected_moments);
  EXPECT_EQ(opt_header["__metadata__"]["format"], "engram-optimizer-v1");
  EXPECT_EQ(opt_header["__metadata__"]["step"], "2");
}

// ---- the safetensors reader and writer on their own ----

// A file made by hand: header JSON text as given, then `data_bytes` zero bytes.
std::string hand_made(const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  testing_util::write_le(bytes, 0, 8, header.size());
  return bytes + header + std::string(data_bytes, '\0');
}

TEST_F(CheckpointTest, SafetensorsRoundTripsEveryDtypeAndShape) {
  std::mt19937 rng(3);
  const NamedTensors tensors = {
      {"z.f32", testing_util::random_uniform({3, 5}, rng)},
      {"a.i32", testing_util::random_ids<int32_t>({7}, 1000, rng)},
      {"m.i64", testing_util::random_ids<int64_t>({2, 1, 3}, 1LL << 40, rng)},
      {"scalar", Tensor::full({}, -2.25f)},
      {"empty", Tensor::zeros({0, 4})},
  };
  const std::string file = path("t.safetensors");
  write_safetensors(file, tensors, {{"note", "{\"json\": [1, 2]} and \"quotes\""}});
  const SafetensorsFile f = read_safetensors(file);
  EXPECT_EQ(f.path, file);
  EXPECT_EQ(f.metadata.at("note"), "{\"json\": [1, 2]} and \"quotes\"");
  EXPECT_EQ(f.metadata.size(), 2u);  // + crc32
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(bitwise_equal(f.tensors.at(name), t)) << name;
  expect_error([&] { f.metadata_int("note"); }, {file, "note", "not a decimal integer"});
  expect_error([&] { f.metadata_value("absent"); }, {file, "absent"});
}

TEST_F(CheckpointTest, SafetensorsRefusesMalformedFiles) {
  const std::string file = path("bad.safetensors");
  const auto expect_refused = [&](const std::string& bytes, const std::vector<std::string>& parts) {
    write_file_atomic(file, bytes);
    std::vector<std::string> with_file = parts;
    with_file.push_back(file);
    expect_error([&] { read_safetensors(file); }, with_file);
  };
  // A header of the given tensor entries with a "crc32" of 0.
  const auto with_crc0 = [](const std::string& entries) {
    return "{" + entries + R"(, "__metadata__": {"crc32": "0"}})";
  };
  std::string too_long = hand_made("{}", 0);
  too_long[0] = 100;
  expect_refused(too_long, {"header length", "truncated"});
  expect_refused(hand_made("{not json", 0), {"JSON"});
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]})"), 4),
                 {"\"x\"", "F16"});
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})"), 8),
                 {"\"x\"", "need 12"});
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "F32", "shape": [-3], "data_offsets": [0, 12]})"), 12),
                 {"\"x\"", "non-negative"});
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                        "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]})"),
                           12),
                 {"\"y\"", "overlapping"});
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                        "y": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]})"),
                           20),
                 {"\"y\"", "gap"});
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]})"), 9),
                 {"trailing"});
  expect_refused(hand_made(R"({"x": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})", 8), {"crc32"});
  expect_refused(hand_made(R"({"__metadata__": {"crc32": 5}})", 0), {"crc32", "must be a string"});
  // Well formed, but the data does not match the recorded checksum.
  expect_refused(hand_made(with_crc0(R"("x": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]})"), 4),
                 {"checksum"});
  expect_error([&] { read_safetensors(path("absent.safetensors")); }, {"absent.safetensors"});
}

// ---- docs/CHECKPOINT.md's Python script against a real checkpoint ----

// The first ```python block of the document.
std::string python_snippet() {
  const std::string doc = read_file(std::string(ENGRAM_SOURCE_DIR) + "/docs/CHECKPOINT.md");
  const std::string open = "```python\n";
  const size_t begin = doc.find(open);
  EG_ASSERT(begin != std::string::npos, "no python block in docs/CHECKPOINT.md");
  const size_t end = doc.find("\n```", begin + open.size());
  return doc.substr(begin + open.size(), end - begin - open.size() + 1);
}

TEST_F(CheckpointTest, DocumentedPythonLoaderReproducesTensorsAndEngramRows) {
  if (std::system("python3 -c 'import json, zlib' > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  TrainingRun run(cfg_);
  train(run, 1);
  const std::string dir = exported(save_checkpoint(run_dir(), cfg_, run.model, run.trainer), "consolidated");
  const std::string script = path("load_engram.py");
  const std::string model_file = (fs::path(dir) / "model.safetensors").string();
  write_file_atomic(script, python_snippet());

  // A token sequence with the pad (eos) id and ids that share a compressed id (3 and 22).
  const std::vector<int32_t> tokens = {3, 22, 2, 28, 0, 3, 17, 22, 9, 11, 5};
  std::string command = "python3 " + script + " " + model_file;
  for (int32_t t : tokens) command += " " + std::to_string(t);
  const testing_util::CommandResult run_result = testing_util::run_command(command);
  ASSERT_EQ(run_result.exit_code, 0) << run_result.out << run_result.err;
  const json result = json::parse(run_result.out);
  EXPECT_EQ(result["step"], 1);

  ASSERT_EQ(result["tensors"].size(), run.model.params().all().size());
  for (const Parameter* p : run.model.params().all()) {
    const json& t = result["tensors"][p->name];
    const std::vector<float> values = p->value.to_vector<float>();
    EXPECT_EQ(t["shape"].get<Shape>(), p->global_shape) << p->name;
    EXPECT_EQ(static_cast<float>(t["first"].get<double>()), values.front()) << p->name;
    EXPECT_EQ(static_cast<float>(t["last"].get<double>()), values.back()) << p->name;
  }

  // The model's own hashing: compressed ids, then the n-gram hash kernel with the layer's plan.
  const auto& g = cfg_.model().engram();
  const int64_t heads = int64_t{g.max_ngram() - 1} * g.heads_per_ngram(), n_tokens = tokens.size();
  Tensor ids = Tensor::from_vector(tokens, {1, n_tokens}), ids_c = Tensor::empty({1, n_tokens}, DType::I32);
  kernels::compress_ids(ids, run.model.compress_table(), ids_c);
  const int64_t pad_c = compression()[cfg_.model().eos_id()];
  for (const EngramLayerHash& plan : run.model.engram_hashing()) {
    std::vector<int64_t> multipliers(plan.multipliers.begin(), plan.multipliers.end());
    Tensor rows = Tensor::empty({1, n_tokens, heads}, DType::I64);
    kernels::ngram_hash(ids_c, pad_c, Tensor::from_vector(multipliers, {g.max_ngram()}),
                        Tensor::from_vector(plan.primes, {heads}), Tensor::from_vector(plan.offsets, {heads}),
                        g.max_ngram(), g.heads_per_ngram(), rows);
    const json& got = result["engram_rows"][std::to_string(plan.layer)];
    ASSERT_EQ(got.size(), tokens.size());
    const std::vector<int64_t> want = rows.to_vector<int64_t>();
    for (int64_t t = 0; t < n_tokens; ++t)
      EXPECT_EQ(got[t].get<std::vector<int64_t>>(),
                std::vector<int64_t>(want.begin() + t * heads, want.begin() + (t + 1) * heads))
          << "layer " << plan.layer << " position " << t;
  }

  // The script verifies the checksum too.
  std::string bytes = read_file(model_file);
  bytes.back() ^= 0x01;
  write_file_atomic(model_file, bytes);
  const testing_util::CommandResult bad = testing_util::run_command(command);
  EXPECT_NE(bad.exit_code, 0);
  const std::string bad_output = bad.out + bad.err;
  EXPECT_NE(bad_output.find("checksum"), std::string::npos) << bad_output;
}

}  // namespace
}  // namespace engram
