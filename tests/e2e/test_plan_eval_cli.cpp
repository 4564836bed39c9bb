// engram-plan and engram-eval end to end, on a checkpoint, a tokenizer and shards the test makes:
// - engram-plan --json on configs/tiny.pbtxt: counts equal the registry of a Model built from that
//   config; a bad config exits 1 with one line naming the field;
// - engram-eval --shards: the loss equals Model::forward's mean over the non-overlapping rows of T + 1
//   tokens computed here, the target count and bits per byte (from the shard's source bytes) are
//   right, and a run directory, a checkpoint directory and a model file give the same answer;
// - engram-eval --text equals --shards of the same text encoded as engram-data does (tokens + </s>),
//   with bits per byte over the file's bytes; --unigram-baseline matches an add-one unigram model
//   computed here;
// - bad inputs (empty text, corrupt checkpoint, shard of another tokenizer, missing checkpoint) exit 1
//   with one line "engram-eval: error: ..." naming the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/config/config.h"
#include "runtime/token_shards.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing_util::CommandResult;

constexpr int kVocab = 320;
constexpr int kSeq = 7;

// Runs `bin/<tool> <args>` (arguments already quoted where needed), capturing stdout and stderr.
CommandResult run_tool(const std::string& tool, const std::string& args) {
  return testing_util::run_command(std::string(ENGRAM_BIN_DIR) + "/" + tool + " " + args);
}

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// Exit 1, nothing on stdout, exactly one stderr line "<tool>: error: ..." containing `needle`.
void expect_one_line_error(const CommandResult& r, const std::string& tool, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind(tool + ": error: ", 0), 0u) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "more than one line: " << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "expected \"" << needle << "\" in: " << r.err;
}

// ---- engram-plan ----

TEST(PlanCli, JsonCountsEqualTheBuiltModel) {
  const std::string config = std::string(ENGRAM_SOURCE_DIR) + "/configs/tiny.pbtxt";
  const CommandResult r = run_tool("engram-plan", "--config '" + config + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json plan = json::parse(r.out);

  const ExperimentConfig cfg = load_config(config);
  const Model model(cfg.model());
  int64_t total = 0, tables = 0, experts = 0, biases = 0;
  std::map<int, int64_t> rows;
  for (const Parameter* p : model.params().all()) {
    total += p->global_numel();
    if (p->name.find(".engram.table") != std::string::npos) {
      tables += p->global_numel();
      rows[std::stoi(p->name.substr(7))] = p->global_shape[0];
    }
    if (p->name.find(".moe.experts.") != std::string::npos) experts += p->global_numel();
    if (p->name.find(".moe.router.bias") != std::string::npos) biases += p->global_numel();
  }
  const json& params = plan["parameters"];
  const json& groups = params["groups"];
  EXPECT_EQ(params["total"].get<int64_t>(), total - biases);
  EXPECT_EQ(params["buffers"]["balancing_biases"].get<int64_t>(), biases);
  EXPECT_EQ(groups["engram_tables"].get<int64_t>(), tables);
  EXPECT_EQ(groups["routed_experts_active"].get<int64_t>() + groups["routed_experts_inactive"].get<int64_t>(),
            experts);
  int64_t group_sum = 0;
  for (const auto& [name, count] : groups.items()) group_sum += count.get<int64_t>();
  EXPECT_EQ(group_sum, total - biases);
  ASSERT_EQ(plan["engram_tables"].size(), rows.size());
  for (const json& layer : plan["engram_tables"])
    EXPECT_EQ(layer["table_rows"].get<int64_t>(), rows[layer["layer"].get<int>()]);
  EXPECT_EQ(plan["flops"]["per_token"].get<int64_t>(),
            6 * plan["flops"]["matmul_params_per_token"].get<int64_t>() +
                6 * cfg.model().n_layers() * cfg.train().seq_len() * cfg.model().d_model());
  EXPECT_EQ(plan["memory_per_rank"]["local_parameters"].get<int64_t>(), total);

  // The readable table prints the same exact total.
  const CommandResult table = run_tool("engram-plan", "--config '" + config + "'");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find(std::to_string(total - biases)), std::string::npos) << table.out;
}

TEST(PlanCli, BadConfigFailsWithOneLineNamingTheField) {
  const std::string config = std::string(ENGRAM_SOURCE_DIR) + "/configs/tiny.pbtxt";
  expect_one_line_error(run_tool("engram-plan", "--config '" + config + "' --set model.moe.top_k=9"),
                        "engram-plan", "model.moe.top_k");
  const testing_util::ScopedTempDir dir("test_plan_cli");
  const fs::path bad = dir / "bad.pbtxt";
  write_file_atomic(bad, "model { vocab_size: 64 d_modle: 8 }\n");
  expect_one_line_error(run_tool("engram-plan", "--config " + q(bad)), "engram-plan", "d_modle");
  expect_one_line_error(run_tool("engram-plan", "--config '" + config + "' --world 3"), "engram-plan",
                        "train.global_batch_size");
}

// ---- engram-eval ----

std::string generated_text(uint32_t seed, int lines) {
  const std::vector<std::string> words = {
      "the", "a",    "of",   "and",   "to",    "in",   "is",   "that", "it",   "was",   "for",
      "on",  "with", "as",   "his",   "they",  "at",   "be",   "this", "from", "have",  "or",
      "by",  "one",  "had",  "not",   "but",   "what", "all",  "were", "when", "we",    "there",
      "can", "an",   "your", "which", "their", "said", "if",   "do",   "will", "each",  "about",
      "how", "up",   "out",  "them",  "then",  "she",  "many", "some", "so",   "these", "would"};
  std::mt19937 rng(seed);
  std::string text;
  for (int line = 0; line < lines; ++line) {
    const int n = 4 + static_cast<int>(rng() % 9);
    for (int i = 0; i < n; ++i) text += (i ? " " : "") + words[rng() % words.size()];
    text += ".\n";
  }
  return text;
}

ExperimentConfig eval_config(const fs::path& tokenizer) {
  ExperimentConfig cfg;
  ModelConfig& m = *cfg.mutable_model();
  m.set_vocab_size(kVocab);
  m.set_d_model(16);
  m.set_n_heads(2);
  m.set_n_layers(2);
  m.set_n_dense_layers(1);
  m.set_d_ff(24);
  m.set_seed(5);
  auto* moe = m.mutable_moe();
  moe->set_n_routed_experts(4);
  moe->set_top_k(2);
  moe->set_expert_d_ff(8);
  moe->set_n_shared_experts(1);
  auto* engram = m.mutable_engram();
  engram->add_layers(1);
  engram->set_heads_per_ngram(2);
  engram->set_head_dim(4);
  engram->add_table_size(31);
  engram->add_table_size(37);
  cfg.mutable_optim()->set_lr(1e-2f);
  cfg.mutable_optim()->set_warmup_steps(0);
  cfg.mutable_train()->set_seq_len(kSeq);
  cfg.mutable_train()->set_global_batch_size(2);
  cfg.mutable_train()->set_max_steps(3);
  cfg.mutable_data()->set_tokenizer(tokenizer.string());
  validate_config(cfg);
  return cfg;
}

// A tokenizer, and a run directory with a checkpoint after 3 training steps; made once per suite.
class EvalCli : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<testing_util::ScopedTempDir>("test_plan_eval");
    tokenizer_path_ = testing_util::train_test_tokenizer(dir_->path(), generated_text(1, 300), kVocab);
    tok_ = std::make_unique<Tokenizer>(tokenizer_path_.string());

    const ExperimentConfig cfg = eval_config(tokenizer_path_);
    Model model(cfg.model());
    Trainer trainer(model, cfg.optim(), cfg.train().max_steps());
    std::mt19937 rng(3);
    for (int step = 0; step < 3; ++step) {
      std::vector<int32_t> row(2 * (kSeq + 1));
      for (int32_t& t : row) t = static_cast<int32_t>(rng() % kVocab);
      std::vector<int32_t> in, out;
      for (int b = 0; b < 2; ++b) {
        in.insert(in.end(), row.begin() + b * (kSeq + 1), row.begin() + b * (kSeq + 1) + kSeq);
        out.insert(out.end(), row.begin() + b * (kSeq + 1) + 1, row.begin() + (b + 1) * (kSeq + 1));
      }
      trainer.step({Batch{Tensor::from_vector(in, {2, kSeq}), Tensor::from_vector(out, {2, kSeq})}});
    }
    checkpoint_dir_ = save_checkpoint((*dir_ / "run").string(), cfg, model, trainer);
    export_consolidated(checkpoint_dir_.string(), (*dir_ / "exported").string(), /*with_optimizer=*/false);
  }
  static void TearDownTestSuite() {
    tok_.reset();
    dir_.reset();
  }

  // The consolidated file (engram-export) of the sharded checkpoint training wrote.
  static fs::path model_file() { return *dir_ / "exported" / "model.safetensors"; }

  // Σ CE and target count over non-overlapping rows of up to T + 1 tokens, each row through
  // Model::forward on its own (the last row may be shorter; a lone last token predicts nothing).
  static std::pair<double, int64_t> reference_loss(const std::vector<int32_t>& tokens, int64_t seq_len) {
    const CheckpointInfo info = read_checkpoint_info(model_file().string());
    Model model(info.config.model(), info.compression_table);
    load_model_weights(info.file, model);
    double ce = 0.0;
    int64_t targets = 0;
    for (size_t begin = 0; begin + 1 < tokens.size(); begin += seq_len + 1) {
      const size_t end = std::min(tokens.size(), begin + seq_len + 1);
      const std::vector<int32_t> in(tokens.begin() + begin, tokens.begin() + end - 1);
      const std::vector<int32_t> out(tokens.begin() + begin + 1, tokens.begin() + end);
      const int64_t t = static_cast<int64_t>(in.size());
      const ForwardStats s =
          model.forward({Tensor::from_vector(in, {1, t}), Tensor::from_vector(out, {1, t})});
      ce += s.ce_sum;
      targets += s.n_targets;
    }
    return {ce, targets};
  }

  static std::vector<int32_t> random_tokens(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(n);
    for (int32_t& id : t) id = static_cast<int32_t>(rng() % kVocab);
    return t;
  }

  static inline std::unique_ptr<testing_util::ScopedTempDir> dir_;
  static inline fs::path tokenizer_path_, checkpoint_dir_;
  static inline std::unique_ptr<Tokenizer> tok_;
};

TEST_F(EvalCli, ShardLossEqualsModelForward) {
  // 50 tokens, T = 7: six rows of 8 tokens (42 targets) and a last row of 2 tokens (1 target).
  const std::vector<int32_t> tokens = random_tokens(50, 11);
  const fs::path shard = *dir_ / "eval.bin";
  write_token_shard(shard.string(), tokens, tok_->hash(), kVocab, 123);
  const auto [ce, targets] = reference_loss(tokens, kSeq);
  ASSERT_EQ(targets, 43);

  // One row per forward pass: the same computation as the reference, so the same bits.
  const CommandResult one =
      run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --shards " + q(shard) + " --batch 1");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const json j = json::parse(one.out);
  EXPECT_EQ(j["tokens"].get<int64_t>(), 43);
  EXPECT_EQ(j["rows"].get<int64_t>(), 7);
  EXPECT_EQ(j["loss"].get<double>(), ce / 43);
  EXPECT_DOUBLE_EQ(j["perplexity"].get<double>(), std::exp(ce / 43));
  EXPECT_EQ(j["bytes"].get<int64_t>(), 123);
  EXPECT_EQ(j["bytes_source"], "shard header source_bytes");
  EXPECT_DOUBLE_EQ(j["bits_per_byte"].get<double>(), ce / std::log(2.0) / 123);
  EXPECT_EQ(j["step"].get<int64_t>(), 3);
  EXPECT_EQ(j["checkpoint"], model_file().string());
  EXPECT_EQ(j["seq_len"].get<int64_t>(), kSeq);

  // Rows batched four at a time: the same loss up to float summation order; and the sharded checkpoint
  // training wrote, given as its directory or as the run directory (its latest checkpoint), holds the
  // same model as the exported file.
  for (const fs::path& ckpt : {checkpoint_dir_, *dir_ / "run"}) {
    const CommandResult r =
        run_tool("engram-eval", "--checkpoint " + q(ckpt) + " --shards " + q(shard) + " --batch 4");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json b = json::parse(r.out);
    EXPECT_EQ(b["tokens"].get<int64_t>(), 43);
    EXPECT_NEAR(b["loss"].get<double>(), ce / 43, 1e-6 * ce / 43);
    EXPECT_EQ(b["checkpoint"], (checkpoint_dir_ / "manifest.json").string());
  }

  // --seq-len changes the rows: T = 10 gives four rows of 11 and one of 6 (45 targets).
  const CommandResult longer = run_tool(
      "engram-eval", "--checkpoint " + q(model_file()) + " --shards " + q(shard) + " --seq-len 10 --batch 1");
  ASSERT_EQ(longer.exit_code, 0) << longer.err;
  const auto [ce10, targets10] = reference_loss(tokens, 10);
  EXPECT_EQ(targets10, 45);
  EXPECT_EQ(json::parse(longer.out)["tokens"].get<int64_t>(), 45);
  EXPECT_EQ(json::parse(longer.out)["loss"].get<double>(), ce10 / 45);
}

TEST_F(EvalCli, MaxTokensEvaluatesAPrefixAndCountsItsBytes) {
  const std::vector<int32_t> tokens = tok_->encode("The quick brown fox jumps over the lazy dog. " 
                                                   "Engram tables remember n-grams; experts compute.");
  ASSERT_GT(tokens.size(), 20u);
  const fs::path shard = *dir_ / "prefix.bin";
  write_token_shard(shard.string(), tokens, tok_->hash(), kVocab, 999);
  const std::vector<int32_t> prefix(tokens.begin(), tokens.begin() + 17);
  const auto [ce, targets] = reference_loss(prefix, kSeq);
  const CommandResult r =
      run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --shards " + q(shard) + " --tokenizer " +
                                  q(tokenizer_path_) + " --max-tokens 17 --batch 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["tokens"].get<int64_t>(), targets);
  EXPECT_EQ(j["loss"].get<double>(), ce / targets);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), tok_->decode(prefix).size());  // not the header's 999
  EXPECT_DOUBLE_EQ(j["bits_per_byte"].get<double>(), ce / std::log(2.0) / tok_->decode(prefix).size());
}

TEST_F(EvalCli, TextEqualsTheShardOfTheSameText) {
  const std::string text = generated_text(2, 12);
  const fs::path text_file = *dir_ / "heldout.txt";
  write_file_atomic(text_file, text);
  std::vector<int32_t> tokens = tok_->encode(text);
  tokens.push_back(tok_->eos_id());
  const fs::path shard = *dir_ / "heldout.bin";
  write_token_shard(shard.string(), tokens, tok_->hash(), kVocab, text.size());

  // The tokenizer comes from the checkpoint's config (data.tokenizer) unless --tokenizer names one.
  const CommandResult from_text =
      run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --text " + q(text_file) + " --batch 1");
  const CommandResult explicit_tok =
      run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --text " + q(text_file) +
                                  " --tokenizer " + q(tokenizer_path_) + " --batch 1");
  const CommandResult from_shard =
      run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --shards " + q(shard) + " --batch 1");
  ASSERT_EQ(from_text.exit_code, 0) << from_text.err;
  ASSERT_EQ(explicit_tok.exit_code, 0) << explicit_tok.err;
  ASSERT_EQ(from_shard.exit_code, 0) << from_shard.err;
  const json t = json::parse(from_text.out), s = json::parse(from_shard.out);
  EXPECT_EQ(json::parse(explicit_tok.out), t);
  const auto [ce, targets] = reference_loss(tokens, kSeq);
  EXPECT_EQ(t["tokens"].get<int64_t>(), targets);
  EXPECT_EQ(t["loss"].get<double>(), ce / static_cast<double>(targets));
  EXPECT_EQ(t["bytes"].get<uint64_t>(), text.size());
  EXPECT_EQ(t["bytes_source"], "text file");
  EXPECT_DOUBLE_EQ(t["bits_per_byte"].get<double>(), ce / std::log(2.0) / static_cast<double>(text.size()));
  for (const char* field : {"loss", "tokens", "bits_per_byte", "bytes"})
    EXPECT_EQ(t[field], s[field]) << field;
}

TEST_F(EvalCli, UnigramBaselineIsTheAddOneUnigramCrossEntropy) {
  // A skewed training distribution, so the baseline differs clearly from the uniform log V.
  std::vector<int32_t> train = random_tokens(400, 21);
  for (size_t i = 0; i < train.size(); i += 2) train[i] = static_cast<int32_t>(train[i] % 10);
  const fs::path train_shard = *dir_ / "train.bin";
  write_token_shard(train_shard.string(), train, tok_->hash(), kVocab, 1000);
  const std::vector<int32_t> tokens = random_tokens(30, 22);
  const fs::path shard = *dir_ / "eval_unigram.bin";
  write_token_shard(shard.string(), tokens, tok_->hash(), kVocab, 77);

  const CommandResult r =
      run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --shards " + q(shard) +
                                  " --unigram-baseline " + q(train_shard));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);

  std::vector<double> count(kVocab, 0.0);
  for (int32_t id : train) count[id] += 1.0;
  // Targets: every token but the first of each row of 8 (rows start at 0, 8, 16, 24).
  double nll = 0.0;
  int64_t targets = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i % (kSeq + 1) == 0) continue;
    nll -= std::log((count[tokens[i]] + 1.0) / (static_cast<double>(train.size()) + kVocab));
    ++targets;
  }
  EXPECT_EQ(j["tokens"].get<int64_t>(), targets);
  EXPECT_NEAR(j["unigram_loss"].get<double>(), nll / static_cast<double>(targets), 1e-12);
  EXPECT_NEAR(j["unigram_bits_per_byte"].get<double>(), nll / std::log(2.0) / 77, 1e-12);
}

TEST_F(EvalCli, EmptyTextFails) {
  const fs::path empty = *dir_ / "empty.txt";
  write_file_atomic(empty, "");
  expect_one_line_error(run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --text " + q(empty)),
                        "engram-eval", "empty");
}

TEST_F(EvalCli, CorruptCheckpointFails) {
  const fs::path corrupt = *dir_ / "corrupt";
  fs::create_directories(corrupt);
  std::string bytes = read_file(model_file());
  bytes[bytes.size() - 5] ^= 0x40;  // inside the last tensor's data: the CRC no longer matches
  write_file_atomic(corrupt / "model.safetensors", bytes);
  const fs::path shard = *dir_ / "small.bin";
  write_token_shard(shard.string(), random_tokens(20, 5), tok_->hash(), kVocab, 40);
  expect_one_line_error(
      run_tool("engram-eval", "--checkpoint " + q(corrupt / "model.safetensors") + " --shards " + q(shard)),
      "engram-eval", (corrupt / "model.safetensors").string());
  expect_one_line_error(
      run_tool("engram-eval", "--checkpoint " + q(*dir_ / "no_such_run") + " --shards " + q(shard)),
      "engram-eval", "no_such_run");
}

TEST_F(EvalCli, ShardOfAnotherTokenizerFails) {
  const fs::path shard = *dir_ / "other_tokenizer.bin";
  write_token_shard(shard.string(), random_tokens(20, 6), tok_->hash() ^ 1, kVocab, 40);
  expect_one_line_error(run_tool("engram-eval", "--checkpoint " + q(model_file()) + " --shards " + q(shard)),
                        "engram-eval", "different tokenizer");
}

}  // namespace
}  // namespace engram
