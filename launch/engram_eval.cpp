// engram-eval: the loss of a trained model on held-out text or a token shard, as one JSON object
// (fields in docs/TOOLS.md).
//
//   engram-eval --checkpoint PATH (--text FILE | --shards FILE) [--tokenizer FILE]
//               [--seq-len T] [--batch B] [--unigram-baseline TRAIN_SHARD] [--device cpu|cuda]
//
// PATH is a model.safetensors file, a checkpoint directory (either layout), or a run directory (its
// latest checkpoint). The model is built from the config and compression table stored in the
// checkpoint. The tokens are cut into non-overlapping rows of T + 1 tokens (the last row may be
// shorter); every token of a row but its first is a target, predicted from the tokens before it in
// the row. --text encodes the file as engram-data encodes one text of a shard (the tokens, then
// </s>).
//
// Tokenizer identity: the tokenizer the model was trained with is known from the files the stored
// config names (data.tokenizer, and the tokenizer hash recorded in data.compression_table) when they
// exist, and from --tokenizer (which also works with --shards, to check them). All known hashes must
// agree, and a shard must carry that hash.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "launch/cli.h"
#include "launch/training_run.h"
#include "model/model.h"
#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/config/config.h"
#include "runtime/safetensors.h"
#include "runtime/token_shards.h"
#include "text/compression.h"
#include "text/tokenizer.h"
#include "train/checkpoint.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::string checkpoint, text, tokenizer, shards, unigram_train;
  int seq_len = 0;  // 0: the checkpoint config's train.seq_len
  int batch = 8;
  int64_t max_tokens = 0;  // 0: every token
  std::string device = "cpu";  // cuda: bf16 matmuls, as training on the GPU
};

// What is known of the tokenizer the model was trained with: its hash and where that came from.
struct TokenizerIdentity {
  uint64_t hash = 0;
  std::string source;
};

std::optional<TokenizerIdentity> known_tokenizer(const ExperimentConfig& cfg,
                                                 const std::string& explicit_path) {
  std::vector<TokenizerIdentity> known;
  if (!explicit_path.empty())
    known.push_back({fnv1a64_bytes(read_file(explicit_path)), "--tokenizer " + explicit_path});
  const std::string& tok = cfg.data().tokenizer();
  if (!tok.empty() && tok != explicit_path && fs::is_regular_file(tok))
    known.push_back({fnv1a64_bytes(read_file(tok)), "data.tokenizer " + tok});
  const std::string& table = cfg.data().compression_table();
  if (!table.empty() && fs::is_regular_file(table))
    known.push_back({read_compression_table(table).tokenizer_hash, "data.compression_table " + table});
  if (known.empty()) return std::nullopt;
  for (const TokenizerIdentity& other : known)
    EG_CHECK(other.hash == known[0].hash, "tokenizer mismatch: ", known[0].source, " has hash ",
             hex64(known[0].hash), " but ", other.source, " (from the checkpoint's config) names hash ",
             hex64(other.hash), ": evaluate with the tokenizer the model was trained with");
  return known[0];
}

// The shard's tokens must come from the model's tokenizer: its hash where known, its vocab size always.
void check_shard(const TokenShard& shard, const std::optional<TokenizerIdentity>& tokenizer, int64_t vocab) {
  if (tokenizer) check_shard_tokenizer(shard, tokenizer->hash, vocab);
  EG_CHECK(static_cast<int64_t>(shard.header.vocab_size) == vocab, shard.path, ": shard vocab size ",
           shard.header.vocab_size, " does not match the model's vocab size ", vocab);
}

struct EvalTokens {
  std::vector<int32_t> tokens;
  uint64_t bytes = 0;
  std::string bytes_source;
};

// The tokenizer file: --tokenizer, else data.tokenizer of the checkpoint's config. `needed_by`
// names the option that needs it.
std::string tokenizer_path(const Options& o, const ExperimentConfig& cfg, const char* needed_by) {
  const std::string path = o.tokenizer.empty() ? cfg.data().tokenizer() : o.tokenizer;
  EG_CHECK(!path.empty(), needed_by,
           " needs a tokenizer: pass --tokenizer FILE (the checkpoint's config names none)");
  EG_CHECK(fs::is_regular_file(path), "tokenizer ", path, " (",
           o.tokenizer.empty() ? "data.tokenizer of the checkpoint's config" : "--tokenizer",
           ") does not exist; pass --tokenizer FILE");
  return path;
}

EvalTokens text_tokens(const Options& o, const ExperimentConfig& cfg,
                       const std::optional<TokenizerIdentity>& known) {
  EvalTokens t;
  const std::string text = read_file(o.text);  // non-empty: checked before the checkpoint was read
  const std::string path = tokenizer_path(o, cfg, "--text");
  const Tokenizer tok(path);
  EG_ASSERT(known && known->hash == tok.hash(), "the tokenizer in use is one of the known ones");
  EG_CHECK(tok.vocab_size() == cfg.model().vocab_size(), path, ": vocab size ", tok.vocab_size(),
           " but the model's is ", cfg.model().vocab_size());
  EG_CHECK(tok.eos_id() == cfg.model().eos_id(), path, ": </s> is id ", tok.eos_id(),
           " but model.eos_id = ", cfg.model().eos_id());
  t.tokens = tok.encode(text);
  t.tokens.push_back(tok.eos_id());
  t.bytes = text.size();
  t.bytes_source = "text file";
  return t;
}

// --max-tokens: keep the first N tokens. Their UTF-8 bytes (for bits per byte) are counted by
// decoding them with the model's tokenizer.
void keep_prefix(EvalTokens& eval, int64_t max_tokens, const Options& o, const ExperimentConfig& cfg) {
  if (max_tokens <= 0 || static_cast<int64_t>(eval.tokens.size()) <= max_tokens) return;
  eval.tokens.resize(static_cast<size_t>(max_tokens));
  const Tokenizer tok(tokenizer_path(o, cfg, "--max-tokens"));
  eval.bytes = tok.decode(eval.tokens).size();
  eval.bytes_source = "the first --max-tokens tokens, decoded";
}

EvalTokens shard_tokens(const Options& o, const ExperimentConfig& cfg,
                        const std::optional<TokenizerIdentity>& known) {
  TokenShard shard = read_token_shard(o.shards);
  check_shard(shard, known, cfg.model().vocab_size());
  EvalTokens t;
  t.tokens = std::move(shard.tokens);
  t.bytes = shard.header.source_bytes;
  t.bytes_source = "shard header source_bytes";
  return t;
}

// Add-one smoothed unigram distribution of a training shard: p(v) = (count_v + 1) / (N + V).
std::vector<double> unigram_log_probs(const TokenShard& train, int64_t vocab) {
  std::vector<double> counts(static_cast<size_t>(vocab), 1.0);
  for (int32_t id : train.tokens) counts[static_cast<size_t>(id)] += 1.0;
  const double total = static_cast<double>(train.tokens.size()) + static_cast<double>(vocab);
  for (double& c : counts) c = std::log(c / total);
  return counts;
}

struct EvalResult {
  double ce_sum = 0.0, unigram_sum = 0.0;
  int64_t targets = 0, rows = 0;
};

// Rows of up to T + 1 tokens, batched B at a time among rows of equal length; each batch through
// Model::forward.
EvalResult evaluate(Model& model, const std::vector<int32_t>& tokens, int64_t seq_len, int64_t batch,
                    const std::vector<double>* unigram) {
  EvalResult r;
  const int64_t n = static_cast<int64_t>(tokens.size()), row_len = seq_len + 1;
  int64_t begin = 0;
  while (n - begin >= 2) {
    const int64_t len = std::min(row_len, n - begin);
    const int64_t rows = len == row_len ? std::min(batch, (n - begin) / row_len) : 1;
    const int64_t t = len - 1;
    std::vector<int32_t> inputs, targets;
    for (int64_t b = 0; b < rows; ++b) {
      const int32_t* row = tokens.data() + begin + b * len;
      inputs.insert(inputs.end(), row, row + t);
      targets.insert(targets.end(), row + 1, row + len);
    }
    const ForwardStats stats =
        model.forward({Tensor::from_vector(inputs, {rows, t}), Tensor::from_vector(targets, {rows, t})});
    r.ce_sum += stats.ce_sum;
    r.targets += stats.n_targets;
    r.rows += rows;
    if (unigram)
      for (int32_t y : targets) r.unigram_sum -= (*unigram)[static_cast<size_t>(y)];
    begin += rows * len;
  }
  return r;
}

int run(const Options& o) {
  EG_CHECK(o.text.empty() != o.shards.empty(), "give exactly one of --text FILE or --shards FILE");
  // The eval input first: a missing or empty one fails before the model is read.
  EG_CHECK(fs::is_regular_file(o.text.empty() ? o.shards : o.text), o.text.empty() ? "--shards " : "--text ",
           o.text.empty() ? o.shards : o.text, ": no such file");
  EG_CHECK(o.text.empty() || fs::file_size(o.text) > 0, "--text ", o.text,
           ": the eval text is empty (nothing to evaluate)");

  CheckpointInfo ckpt = read_checkpoint_info(resolve_checkpoint(o.checkpoint, "--checkpoint"));
  const ModelConfig& mc = ckpt.config.model();
  const int64_t seq_len = o.seq_len > 0 ? o.seq_len : ckpt.config.train().seq_len();
  const std::optional<TokenizerIdentity> known = known_tokenizer(ckpt.config, o.tokenizer);
  EvalTokens eval = o.text.empty() ? shard_tokens(o, ckpt.config, known) : text_tokens(o, ckpt.config, known);
  keep_prefix(eval, o.max_tokens, o, ckpt.config);
  EG_CHECK(eval.tokens.size() >= 2, o.text.empty() ? o.shards : o.text, ": ", eval.tokens.size(),
           " token(s); evaluation needs at least 2 (one input and one target)");

  std::optional<std::vector<double>> unigram;
  if (!o.unigram_train.empty()) {
    const TokenShard train = read_token_shard(o.unigram_train);
    check_shard(train, known, mc.vocab_size());
    unigram = unigram_log_probs(train, mc.vocab_size());
  }

  config::RuntimeConfig runtime = ckpt.config.runtime();  // its matmul precision, as it was trained
  runtime.set_device(o.device == "cuda" ? config::CUDA : config::CPU);
  Model model(mc, ckpt.compression_table, nullptr, select_device(runtime));
  load_model_weights(ckpt.file, model);
  ckpt.file.tensors.clear();  // the weights now live in the model: do not hold them twice
  const EvalResult r = evaluate(model, eval.tokens, seq_len, o.batch, unigram ? &*unigram : nullptr);

  const double loss = r.ce_sum / static_cast<double>(r.targets);
  const auto per_byte = [&](double nats) -> nlohmann::json {
    if (eval.bytes == 0) return nullptr;  // a shard that records no source text size
    return nats / std::log(2.0) / static_cast<double>(eval.bytes);
  };
  nlohmann::ordered_json j;
  j["checkpoint"] = ckpt.file.path;
  j["step"] = ckpt.step;
  j["loss"] = loss;
  j["perplexity"] = std::exp(loss);
  j["bits_per_byte"] = per_byte(r.ce_sum);
  j["tokens"] = r.targets;
  j["rows"] = r.rows;
  j["seq_len"] = seq_len;
  j["bytes"] = eval.bytes;
  j["bytes_source"] = eval.bytes_source;
  j["tokenizer_hash"] = known ? nlohmann::json(hex64(known->hash)) : nlohmann::json(nullptr);
  if (unigram) {
    j["unigram_loss"] = r.unigram_sum / static_cast<double>(r.targets);
    j["unigram_bits_per_byte"] = per_byte(r.unigram_sum);
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) {
  engram::Options o;
  CLI::App app{"engram-eval: loss, perplexity and bits per byte of a checkpoint on held-out text or a shard"};
  app.add_option("--checkpoint", o.checkpoint, "model.safetensors, a checkpoint directory (sharded or consolidated) or a run directory")
      ->required();
  app.add_option("--text", o.text, "UTF-8 text file to evaluate on");
  app.add_option("--tokenizer", o.tokenizer,
                 "SentencePiece model: encodes --text, and shards must carry its hash (default: the config's "
                 "data.tokenizer)");
  app.add_option("--shards", o.shards, "token shard file to evaluate on");
  app.add_option("--seq-len", o.seq_len, "tokens predicted per row (default: the config's train.seq_len)")
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch, "rows per forward pass (default 8)")->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", o.max_tokens,
                 "evaluate only the first N tokens (bytes for bits per byte by decoding them)")
      ->check(CLI::PositiveNumber);
  app.add_option("--unigram-baseline", o.unigram_train,
                 "training shard: also report the add-one unigram cross-entropy of the eval tokens");
  app.add_option("--device", o.device, "cpu (float32, the default) or cuda (this process's GPU, bf16 matmuls)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  return engram::cli::run_tool(app, "engram-eval", argc, argv, [&] { return engram::run(o); });
}
