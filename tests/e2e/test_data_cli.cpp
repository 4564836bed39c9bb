// engram-data end to end, on a small corpus the test writes (two files of blank-line separated documents
// in several scripts, and one held-out text with characters the corpus never shows):
// - a run with --corpus, --eval, --out (and --wikitext at a missing directory, so nothing outside the
//   test directory is read) exits 0 and writes exactly the tokenizer, the compression table and the
//   train / val / eval shards into --out, none at the config's own paths;
// - every shard validates (read_token_shard, check_shard_tokenizer with the tokenizer's hash) and decodes
//   to the text it was made from: per corpus file, all documents but the last then </s> (train), the last
//   document then </s> (val), and the eval text then </s>; each header records the source's byte count;
// - the compression table validates, names the tokenizer's hash, is dense and equals the library's;
// - a second run reuses everything: same bytes, same modification times, nothing retrained;
// - a missing corpus directory ends with exit 1, one line "engram-data: error: ..." naming it, and no
//   file written.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/atomic_file.h"
#include "runtime/token_shards.h"
#include "tests/test_util.h"
#include "text/compression.h"
#include "text/tokenizer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using testing_util::CommandResult;

constexpr int kVocab = 400;
constexpr int kEos = 2;

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

// ASCII in both cases, accents, ß, Greek, Japanese, full-width forms, an emoji, digits, punctuation.
const std::vector<std::string> kWords = {
    "the", "a", "of", "and", "river", "stone", "light", "Over", "house", "was", "for", "on", "with",
    "Because", "mind", "they", "at", "quickly", "this", "from", "café", "naïve", "Zürich", "Straße",
    "résumé", "Ελλάδα", "λόγος", "日本語", "東京", "ＡＢＣ", "１２３", "🙂", "1984", "3.14", "(maybe)",
    "well,", "end.", "it's", "déjà vu", "Ångström"};

// `count` documents of 2..8 lines, each line 4..12 words (some lines indented).
std::vector<std::string> make_documents(std::mt19937& rng, int count) {
  std::vector<std::string> docs;
  for (int d = 0; d < count; ++d) {
    std::vector<std::string> lines;
    const int n_lines = 2 + static_cast<int>(rng() % 7);
    for (int l = 0; l < n_lines; ++l) {
      std::vector<std::string> words;
      const int n_words = 4 + static_cast<int>(rng() % 9);
      for (int w = 0; w < n_words; ++w) words.push_back(kWords[rng() % kWords.size()]);
      lines.push_back((rng() % 5 == 0 ? "  " : "") + join(words, " "));
    }
    docs.push_back(join(lines, "\n"));
  }
  return docs;
}

// Every regular file under `dir`, relative path → (bytes, modification time).
using Snapshot = std::map<std::string, std::pair<std::string, fs::file_time_type>>;
Snapshot snapshot(const fs::path& dir) {
  Snapshot files;
  if (!fs::exists(dir)) return files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file())
      files[fs::relative(entry.path(), dir).string()] = {read_file(entry.path().string()),
                                                         entry.last_write_time()};
  return files;
}

// The shard's tokens cut at each </s>, every piece decoded; the shard must end with </s>.
std::vector<std::string> decode_documents(const TokenShard& shard, const Tokenizer& tok) {
  EXPECT_FALSE(shard.tokens.empty());
  EXPECT_EQ(shard.tokens.back(), kEos) << shard.path << " does not end with </s>";
  std::vector<std::string> texts;
  std::vector<int32_t> piece;
  for (int32_t id : shard.tokens) {
    if (id != kEos) {
      piece.push_back(id);
      continue;
    }
    texts.push_back(tok.decode(piece));
    piece.clear();
  }
  return texts;
}

uint64_t total_bytes(const std::vector<std::string>& texts) {
  uint64_t n = 0;
  for (const std::string& t : texts) n += t.size();
  return n;
}

class DataCli : public testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "corpus");
    fs::create_directories(dir_ / "eval");
    std::mt19937 rng(20240611);
    for (const char* name : {"alpha", "beta"}) {
      corpus_[name] = make_documents(rng, 24);
      const fs::path file = dir_ / "corpus" / (std::string(name) + ".txt");
      write_file_atomic(file.string(), join(corpus_[name], "\n\n") + "\n");
    }
    // Characters the corpus never shows (byte fallback on the way in, bytes again on the way out).
    eval_text_ = join(make_documents(rng, 4), "\n\n") + "\nŊŋ 🦀 ½ — ｶﾀｶﾅ\n";
    write_file_atomic((dir_ / "eval" / "heldout.txt").string(), eval_text_);

    std::ostringstream c;
    const fs::path data = dir_ / "config_paths";  // --out must redirect every output away from here
    c << "model {\n  vocab_size: " << kVocab << "\n  d_model: 16\n  n_layers: 2\n  n_heads: 2\n  d_ff: 32\n"
      << "  n_dense_layers: 1\n  eos_id: " << kEos << "\n"
      << "  moe { n_routed_experts: 4 top_k: 2 expert_d_ff: 16 n_shared_experts: 1 }\n"
      << "  engram { layers: [1] max_ngram: 3 heads_per_ngram: 2 head_dim: 4 table_size: [31, 37] }\n}\n"
      << "data { train_shards: \"" << (data / "train.bin").string() << "\" val_shards: \""
      << (data / "val.bin").string() << "\" tokenizer: \"" << (data / "tokenizer.model").string()
      << "\" compression_table: \"" << (data / "compression.bin").string() << "\" seed: 3 }\n"
      << "train { seq_len: 16 global_batch_size: 4 }\n";
    write_file_atomic((dir_ / "config.pbtxt").string(), c.str());
  }
  void TearDown() override {
    if (HasFailure()) dir_.keep();
  }

  // engram-data with the test's config, eval text, a WikiText directory that does not exist, and `args`.
  CommandResult run_data(const std::string& args) const {
    return testing_util::run_command(std::string(ENGRAM_BIN_DIR) + "/engram-data --config '" +
                                     (dir_ / "config.pbtxt").string() + "' --eval '" +
                                     (dir_ / "eval").string() + "' --wikitext '" +
                                     (dir_ / "no_wikitext").string() + "' " + args);
  }

  testing_util::ScopedTempDir dir_{"test_data_cli"};
  std::map<std::string, std::vector<std::string>> corpus_;  // file stem → documents, in name order
  std::string eval_text_;
};

TEST_F(DataCli, WritesValidOutputsThatDecodeToTheTextAndReusesThem) {
#ifndef ENGRAM_HAVE_ICU
  GTEST_SKIP() << "this build lacks ICU; engram-data needs it for the compression table";
#else
  const fs::path out = dir_ / "out";
  const std::string args = "--corpus '" + (dir_ / "corpus").string() + "' --out '" + out.string() + "'";
  const CommandResult first = run_data(args);
  ASSERT_EQ(first.exit_code, 0) << first.out << first.err;

  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(out)) names.insert(entry.path().filename().string());
  const std::set<std::string> expected_names = {"tokenizer.model", "tokenizer.vocab", "compression.bin",
                                                "train.bin",       "val.bin",         "eval_heldout.bin"};
  EXPECT_EQ(names, expected_names);
  EXPECT_FALSE(fs::exists(dir_ / "config_paths")) << "--out did not redirect every output";

  const Tokenizer tok((out / "tokenizer.model").string());
  ASSERT_EQ(tok.vocab_size(), kVocab);
  ASSERT_EQ(tok.eos_id(), kEos);

  const CompressionTable table = read_compression_table((out / "compression.bin").string());
  EXPECT_EQ(table.tokenizer_hash, tok.hash());
  ASSERT_EQ(table.table.size(), static_cast<size_t>(kVocab));
  int32_t next_new = 0;  // canonical ids are dense, in order of first appearance
  for (int32_t c : table.table) {
    ASSERT_GE(c, 0);
    ASSERT_LE(c, next_new);
    if (c == next_new) ++next_new;
  }
  EXPECT_LT(next_new, kVocab) << "no two pieces were merged (case and accents should merge some)";
  EXPECT_EQ(table.table, build_compression_table(tok));

  // Expected texts, from the documents as the test wrote them: the last document of each file is its
  // validation split.
  std::vector<std::string> train_texts, val_texts;
  for (const auto& [name, docs] : corpus_) {
    train_texts.push_back(join(std::vector<std::string>(docs.begin(), docs.end() - 1), "\n\n"));
    val_texts.push_back(docs.back());
  }
  const std::pair<const char*, std::vector<std::string>> expected[] = {
      {"train.bin", train_texts}, {"val.bin", val_texts}, {"eval_heldout.bin", {eval_text_}}};
  for (const auto& [file, texts] : expected) {
    SCOPED_TRACE(file);
    const TokenShard shard = read_token_shard((out / file).string());
    check_shard_tokenizer(shard, tok.hash(), kVocab);
    EXPECT_EQ(shard.header.vocab_size, static_cast<uint32_t>(kVocab));
    EXPECT_EQ(shard.header.token_count, shard.tokens.size());
    EXPECT_EQ(shard.header.source_bytes, total_bytes(texts));
    EXPECT_EQ(decode_documents(shard, tok), texts);
  }

  // Second run: every output is checked and kept as it is.
  const Snapshot before = snapshot(out);
  const CommandResult second = run_data(args);
  ASSERT_EQ(second.exit_code, 0) << second.out << second.err;
  EXPECT_TRUE(snapshot(out) == before) << "a second run rewrote outputs:\n" << second.out;
  EXPECT_EQ(second.out.find("training the tokenizer"), std::string::npos) << second.out;
  EXPECT_NE(second.out.find("(reused)"), std::string::npos) << second.out;
#endif
}

TEST_F(DataCli, MissingCorpusDirectoryFailsWithOneLineAndWritesNothing) {
  const fs::path out = dir_ / "out", missing = dir_ / "no_such_corpus";
  const CommandResult r = run_data("--corpus '" + missing.string() + "' --out '" + out.string() + "'");
  EXPECT_EQ(r.exit_code, 1);
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.rfind("engram-data: error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "more than one line: " << r.err;
  EXPECT_NE(r.err.find(missing.string() + ": corpus directory not found"), std::string::npos) << r.err;
  EXPECT_TRUE(snapshot(out).empty()) << "files left in " << out;
  EXPECT_FALSE(fs::exists(dir_ / "config_paths"));
}

}  // namespace
}  // namespace engram
