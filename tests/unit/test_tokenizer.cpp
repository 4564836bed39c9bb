// SentencePiece BPE tokenizer: training on a small generated text, the special and byte pieces,
// exact encode/decode round trips (non-ASCII, characters never seen in training, newlines and
// whitespace), the line-by-line encoding rule, deterministic training, and errors that name files.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using testing_util::process_temp_dir;

constexpr int kVocab = 400;

uint64_t naive_fnv1a64(const std::string& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

// A few hundred lines of sentences drawn from a small word list, some of it non-ASCII.
std::string generated_text() {
  const std::vector<std::string> words = {
      "the",    "a",      "of",     "and",    "to",     "in",     "is",    "that",  "it",   "was",
      "for",    "on",     "with",   "as",     "his",    "they",   "at",    "be",    "this", "from",
      "have",   "or",     "by",     "one",    "had",    "not",    "but",   "what",  "all",  "were",
      "when",   "we",     "there",  "can",    "an",     "your",   "which", "their", "said", "if",
      "do",     "will",   "each",   "about",  "how",    "up",     "out",   "them",  "then", "she",
      "many",   "some",   "so",     "these",  "would",  "other",  "into",  "has",   "more", "her",
      "two",    "like",   "him",    "see",    "time",   "could",  "no",    "make",  "café", "naïve",
      "façade", "Zürich", "straße", "résumé", "Ελλάδα", "日本語", "The",   "When",  "It"};
  std::mt19937 rng(12345);
  std::string text;
  for (int line = 0; line < 400; ++line) {
    const int n = 5 + int(rng() % 11);
    for (int i = 0; i < n; ++i) text += (i ? " " : "") + words[rng() % words.size()];
    text += (rng() % 4 == 0) ? ", 1234.\n" : ".\n";
  }
  return text;
}

// Trains once for the whole suite (about a second).
class TokenizerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    corpus_ = generated_text();
    model_path_ = testing_util::train_test_tokenizer(process_temp_dir(), corpus_, kVocab, /*seed=*/7);
    tok_ = std::make_unique<Tokenizer>(model_path_);
  }
  static void TearDownTestSuite() { tok_.reset(); }
  static int id_of(const std::string& piece) {
    for (int id = 0; id < tok_->vocab_size(); ++id) {
      if (tok_->piece(id) == piece) return id;
    }
    return -1;
  }
  static inline std::string corpus_, model_path_;
  static inline std::unique_ptr<Tokenizer> tok_;
};

TEST_F(TokenizerTest, SpecialAndBytePieces) {
  EXPECT_EQ(tok_->vocab_size(), kVocab);
  EXPECT_EQ(tok_->piece(0), "<unk>");
  EXPECT_EQ(tok_->piece(1), "<s>");
  EXPECT_EQ(tok_->piece(2), "</s>");
  EXPECT_EQ(tok_->eos_id(), 2);
  int bytes = 0;
  for (int id = 0; id < tok_->vocab_size(); ++id) {
    const std::string p = tok_->piece(id);
    const bool looks_like_byte = p.size() == 6 && p.rfind("<0x", 0) == 0 && p.back() == '>';
    EXPECT_EQ(tok_->is_byte(id), looks_like_byte) << id << " " << p;
    bytes += tok_->is_byte(id);
  }
  EXPECT_EQ(bytes, 256);
  EXPECT_FALSE(tok_->is_byte(-1));
  EXPECT_FALSE(tok_->is_byte(kVocab));
}

TEST_F(TokenizerTest, FilesAndHash) {
  const fs::path dir = process_temp_dir();
  EXPECT_TRUE(fs::exists(dir / "tok.vocab"));
  EXPECT_EQ(tok_->hash(), naive_fnv1a64(read_file(model_path_)));
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << "leftover " << entry.path();
  }
}

TEST_F(TokenizerTest, LearnedMergesCompressTrainingText) {
  const std::vector<int32_t> ids = tok_->encode(corpus_);
  EXPECT_LT(ids.size() * 2, corpus_.size()) << "fewer than 2 bytes per token: merges were not learned";
  for (int32_t id : ids) ASSERT_FALSE(tok_->is_byte(id) && tok_->piece(id) != "<0x0A>") << tok_->piece(id);
}

TEST_F(TokenizerTest, RoundTripIsExact) {
  const std::vector<std::string> texts = {
      "",
      "the café was naïve",
      "  leading and trailing spaces  ",
      "tabs\tand   runs of spaces",
      "line one\nline two\n\n\nafter blank lines\n",
      "\n",
      "\n\n  indented\n",
      "Ελλάδα 日本語 straße Zürich",
      "unseen: 🙂 Ω ǅ \x01 \x7f ☃",  // characters never in training: byte fallback
      "The When It 1234.",
  };
  for (const std::string& text : texts) EXPECT_EQ(tok_->decode(tok_->encode(text)), text) << text;
  EXPECT_EQ(tok_->decode(tok_->encode(corpus_)), corpus_);
}

TEST_F(TokenizerTest, UnseenCharactersUseBytePieces) {
  const std::string snowman = "\xE2\x98\x83";  // U+2603, not in the training text
  const std::vector<int32_t> ids = tok_->encode("the " + snowman);
  std::vector<std::string> byte_pieces;
  for (int32_t id : ids) {
    if (tok_->is_byte(id)) byte_pieces.push_back(tok_->piece(id));
  }
  EXPECT_EQ(byte_pieces, (std::vector<std::string>{"<0xE2>", "<0x98>", "<0x83>"}));
  for (int32_t id : ids) EXPECT_NE(id, 0) << "<unk> emitted: byte fallback did not apply";
}

TEST_F(TokenizerTest, TextIsEncodedLineByLine) {
  const int newline = id_of("<0x0A>");
  ASSERT_GE(newline, 0);
  const std::vector<int32_t> a = tok_->encode("the café"), b = tok_->encode("  was there");
  std::vector<int32_t> expected = a;
  expected.push_back(newline);
  expected.insert(expected.end(), b.begin(), b.end());
  EXPECT_EQ(tok_->encode("the café\n  was there"), expected);
  EXPECT_EQ(tok_->encode("\n"), std::vector<int32_t>{newline});
  // A line's first word gets the word-initial ("▁") piece it has at the start of the text.
  const std::vector<int32_t> the = tok_->encode("the"), after_newline = tok_->encode("x\nthe");
  ASSERT_FALSE(the.empty());
  EXPECT_EQ(tok_->piece(the[0]).rfind("\xE2\x96\x81", 0), 0u) << tok_->piece(the[0]);
  ASSERT_GE(after_newline.size(), the.size());
  EXPECT_TRUE(std::equal(the.begin(), the.end(), after_newline.end() - the.size()));
}

TEST_F(TokenizerTest, DecodeRejectsIdsOutsideTheVocabulary) {
  EXPECT_THROW(tok_->decode({3, kVocab}), Error);
  EXPECT_THROW(tok_->decode({-1}), Error);
  EXPECT_THROW(tok_->piece(kVocab), Error);
}

TEST(Tokenizer, TrainingIsDeterministicAndSamplesLines) {
  // Lines of random letters, so which lines are sampled changes the merges: sampling half of them
  // must give another model than all of them, and twice the same model bytes.
  const fs::path dir = process_temp_dir();
  std::mt19937 rng(99);
  std::string text;
  for (int line = 0; line < 400; ++line) {
    for (int word = 0; word < 8; ++word) {
      text += word ? " " : "";
      for (int c = 0, n = 2 + int(rng() % 5); c < n; ++c) text += char('a' + rng() % 12);
    }
    text += '\n';
  }
  write_file_atomic(dir / "random_words.txt", text);
  const auto train = [&](const std::string& name, int64_t max_sentences) {
    TokenizerTrainOptions options;
    options.input_files = {(dir / "random_words.txt").string()};
    options.model_prefix = (dir / name).string();
    options.vocab_size = kVocab;
    options.max_sentences = max_sentences;
    options.seed = 7;
    train_tokenizer(options);
    return read_file(dir / (name + ".model"));
  };
  const std::string a = train("half_a", 200), b = train("half_b", 200), all = train("all", 1000);
  EXPECT_TRUE(a == b) << "the same input gave two different models";
  EXPECT_TRUE(a != all) << "max_sentences did not limit the training lines";
}

TEST(Tokenizer, ErrorsNameTheFile) {
  const fs::path dir = process_temp_dir();
  const std::string missing = (dir / "missing.model").string();
  try {
    Tokenizer t(missing);
    FAIL() << "loaded a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  const std::string garbage = (dir / "garbage.model").string();
  write_file_atomic(garbage, "not a model");
  try {
    Tokenizer t(garbage);
    FAIL() << "loaded a text file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(garbage), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not a SentencePiece model"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, TrainingErrors) {
  TokenizerTrainOptions options;
  options.model_prefix = (process_temp_dir() / "none").string();
  EXPECT_THROW(train_tokenizer(options), Error);  // no input
  options.input_files = {(process_temp_dir() / "no_such_corpus.txt").string()};
  try {
    train_tokenizer(options);
    FAIL() << "trained on a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_corpus.txt"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(process_temp_dir() / "none.model"));
}

}  // namespace
}  // namespace engram
