// The Engram compression table (MODEL.md §4.1): normalization keys (case, accents, NFKC width forms,
// whitespace, byte pieces, pieces that normalize to nothing), dense first-appearance ids, the table
// of a trained tokenizer, and the table file (layout, round trip, corruption).
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "tests/test_util.h"
#include "text/compression.h"
#include "text/tokenizer.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using testing_util::expect_error;
using testing_util::process_temp_dir;
using testing_util::read_le;
using testing_util::write_le;

void reseal(std::string& bytes) {
  write_le(bytes, bytes.size() - 4, 4,
           ::crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size() - 4));
}

// A dense table over V ids with `distinct` canonical ids, each new id appearing in order.
std::vector<int32_t> random_dense_table(size_t v, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(v);
  int32_t next = 0;
  for (auto& c : t) c = (next == 0 || rng() % 3 == 0) ? next++ : int32_t(rng() % next);
  return t;
}

// ---------------------------------------------------------------- keys (ICU)

#ifdef ENGRAM_HAVE_ICU

TEST(CompressionKey, CaseFolds) {
  EXPECT_EQ(compression_key("The"), "the");
  EXPECT_EQ(compression_key("THE"), "the");
  EXPECT_EQ(compression_key(" The"), "the");  // "▁The" decoded
  EXPECT_EQ(compression_key("ΣΟΦΙΑ"), "σοφια");
}

TEST(CompressionKey, DropsAccents) {
  EXPECT_EQ(compression_key("é"), "e");          // precomposed U+00E9
  EXPECT_EQ(compression_key("e\xCC\x81"), "e");  // e + combining acute U+0301
  EXPECT_EQ(compression_key("Éclair"), "eclair");
  EXPECT_EQ(compression_key("naïve"), "naive");
  EXPECT_EQ(compression_key("Zürich"), "zurich");
}

TEST(CompressionKey, FoldsNfkcCompatibilityForms) {
  EXPECT_EQ(compression_key("\xEF\xBC\xA1"), "a");               // U+FF21 fullwidth A
  EXPECT_EQ(compression_key("\xEF\xBD\x81\xEF\xBD\x82"), "ab");  // fullwidth a b
  EXPECT_EQ(compression_key("\xEF\xAC\x81"), "fi");              // U+FB01 ligature fi
  EXPECT_EQ(compression_key("\xE2\x91\xA0"), "1");               // U+2460 circled one
  EXPECT_EQ(compression_key("x\xC2\xB2"), "x2");                 // superscript two
}

TEST(CompressionKey, WhitespaceCollapsesAndTrims) {
  EXPECT_EQ(compression_key("a  \t b"), "a b");
  EXPECT_EQ(compression_key("  a b  "), "a b");
  EXPECT_EQ(compression_key("a\u3000b"), "a b");  // U+3000 ideographic space
}

TEST(CompressionKey, WhitespaceOnlyPiecesBecomeOneSpace) {
  for (const std::string ws : {" ", "    ", "\t", " \t ", "\xC2\xA0", "\xE3\x80\x80", "\n"}) {
    EXPECT_EQ(compression_key(ws), " ") << "[" << ws << "]";
  }
}

TEST(CompressionKey, PieceThatNormalizesToNothingKeepsItsText) {
  const std::string acute = "\xCC\x81";  // a lone combining mark (Mn): dropped, leaving ""
  EXPECT_EQ(compression_key(acute), acute);
  const std::string two_marks = "\xCC\x81\xCC\x88";
  EXPECT_EQ(compression_key(two_marks), two_marks);
  EXPECT_EQ(compression_key(""), "");
}

TEST(CompressionKey, BytePiecesKeepTheirPieceText) {
  // Byte pieces are keyed by their piece string, never by the byte they stand for.
  EXPECT_NE(compression_key("<0x41>"), compression_key("A"));
  EXPECT_NE(compression_key("<0x20>"), compression_key(" "));
  EXPECT_EQ(compression_key("<0x41>").substr(0, 3), "<0x");
  EXPECT_NE(compression_key("<0xE2>"), compression_key("<0xE3>"));
}

// ---------------------------------------------------------------- tables (ICU)

TEST(CompressionTable, DenseIdsInOrderOfFirstAppearance) {
  const std::vector<std::string> pieces = {"<unk>",  "<s>", "</s>", " The",     "x",     "the", " THE ",
                                           "é",      "E",   "e",    "Ｅ",       " ",     "  ",  "\t",
                                           "<0x41>", "A",   "a",    "\xCC\x81", "<0x42>"};
  // By the rules: the/The/THE share one id; é/E/e/Ｅ another; the whitespace pieces one; A/a one.
  const std::vector<int32_t> expected = {0, 1, 2, 3, 4, 3, 3, 5, 5, 5, 5, 6, 6, 6, 7, 8, 8, 9, 10};
  EXPECT_EQ(build_compression_table(pieces), expected);
}

TEST(CompressionTable, MatchesNaiveAssignmentOnManyPieces) {
  // Random short strings over a small alphabet with case, accents, width forms and spaces: the table
  // must give equal ids exactly to equal keys, numbered by first appearance.
  const std::vector<std::string> alphabet = {"a", "A", "á", "Ａ", "b", "B", " ", "\t", "\xCC\x81", "ß"};
  std::mt19937 rng(5);
  std::vector<std::string> pieces;
  for (int i = 0; i < 333; ++i) {
    std::string p;
    for (int n = 1 + int(rng() % 3); n > 0; --n) p += alphabet[rng() % alphabet.size()];
    pieces.push_back(p);
  }
  const std::vector<int32_t> table = build_compression_table(pieces);
  ASSERT_EQ(table.size(), pieces.size());
  std::map<std::string, int32_t> first_id;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const std::string key = compression_key(pieces[i]);
    const auto [it, inserted] = first_id.emplace(key, int32_t(first_id.size()));
    EXPECT_EQ(table[i], it->second) << i << " [" << pieces[i] << "]";
  }
}

TEST(CompressionTable, FromTrainedTokenizer) {
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += "The cat and the dog. THE END of the story, said Éric to eric. Ａ fine day.\n";
    text += "the The the  indented\tline " + std::to_string(i) + "\n";
  }
  const Tokenizer tok(testing_util::train_test_tokenizer(process_temp_dir(), text, 320));

  // The decoding rule, written out: "▁" → " " except in byte pieces.
  std::vector<std::string> decoded;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    std::string p = tok.piece(id), d;
    for (size_t i = 0; i < p.size();) {
      if (!tok.is_byte(id) && p.compare(i, 3, "\xE2\x96\x81") == 0) {
        d += ' ';
        i += 3;
      } else {
        d += p[i++];
      }
    }
    decoded.push_back(d);
  }
  const std::vector<int32_t> table = build_compression_table(tok);
  EXPECT_EQ(table, build_compression_table(decoded));
  ASSERT_EQ(int(table.size()), tok.vocab_size());
  EXPECT_EQ((std::vector<int32_t>(table.begin(), table.begin() + 3)), (std::vector<int32_t>{0, 1, 2}));

  std::map<int32_t, int> byte_ids;
  for (int id = 0; id < tok.vocab_size(); ++id) {
    if (tok.is_byte(id)) ++byte_ids[table[id]];
  }
  EXPECT_EQ(byte_ids.size(), 256u) << "byte pieces must keep distinct canonical ids";
  const int32_t compressed = *std::max_element(table.begin(), table.end()) + 1;
  EXPECT_LT(compressed, tok.vocab_size()) << "case variants in the text should merge";
}

#else

TEST(CompressionKey, NeedsIcu) { GTEST_SKIP() << "built without ICU (install libicu-dev)"; }

#endif

// ---------------------------------------------------------------- file

TEST(CompressionFile, RoundTripAndLayout) {
  for (size_t v : {1, 3, 7, 33, 1001}) {
    const std::string path = (process_temp_dir() / ("table_" + std::to_string(v) + ".bin")).string();
    const std::vector<int32_t> table = random_dense_table(v, uint32_t(v));
    const int32_t compressed = *std::max_element(table.begin(), table.end()) + 1;
    const uint64_t hash = 0xFEDCBA9876543210ull ^ v;
    write_compression_table(path, table, hash);

    const std::string bytes = read_file(path);
    ASSERT_EQ(bytes.size(), 32 + 4 * v + 4);
    EXPECT_EQ(bytes.substr(0, 8), "ENGRAMCT");
    EXPECT_EQ(read_le(bytes, 8, 4), 1u);
    EXPECT_EQ(read_le(bytes, 12, 4), v);
    EXPECT_EQ(read_le(bytes, 16, 4), uint64_t(compressed));
    EXPECT_EQ(read_le(bytes, 20, 4), 0u);
    EXPECT_EQ(read_le(bytes, 24, 8), hash);
    for (size_t i = 0; i < v; ++i) ASSERT_EQ(read_le(bytes, 32 + 4 * i, 4), uint64_t(table[i])) << i;
    EXPECT_EQ(read_le(bytes, bytes.size() - 4, 4),
              ::crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size() - 4));

    const CompressionTable read = read_compression_table(path);
    EXPECT_EQ(read.table, table);
    EXPECT_EQ(read.tokenizer_hash, hash);
  }
}

TEST(CompressionFile, CorruptFilesAreRejected) {
  const std::string path = (process_temp_dir() / "corrupt.bin").string();
  write_compression_table(path, random_dense_table(50, 1), 42);
  const std::string good = read_file(path);

  std::string bytes = good;
  bytes[32 + 4 * 10] ^= 1;
  write_file_atomic(path, bytes);
  expect_error([&] { read_compression_table(path); }, {path, "corrupt compression table", "checksum"});

  write_file_atomic(path, good.substr(0, good.size() - 5));
  expect_error([&] { read_compression_table(path); }, {path, "V = 50", "236 bytes", "231"});

  bytes = good;
  bytes[3] = 'X';
  write_file_atomic(path, bytes);
  expect_error([&] { read_compression_table(path); }, {path, "not a compression table", "ENGRAMCT"});

  bytes = good;
  write_le(bytes, 16, 4, read_le(good, 16, 4) + 1);  // V' that the entries do not have
  reseal(bytes);
  write_file_atomic(path, bytes);
  expect_error([&] { read_compression_table(path); }, {path, "V' = "});

  bytes = good;
  write_le(bytes, 32, 4, 5);  // compress[0] = 5: not first-appearance order
  reseal(bytes);
  write_file_atomic(path, bytes);
  expect_error([&] { read_compression_table(path); }, {path, "not dense", "compress[0] = 5"});

  const std::string missing = (process_temp_dir() / "missing.bin").string();
  expect_error([&] { read_compression_table(missing); }, {"missing.bin"});
}

TEST(CompressionFile, WriterRejectsNonDenseTablesAndLeavesNoFile) {
  const std::string path = (process_temp_dir() / "rejected.bin").string();
  fs::remove(path);
  expect_error([&] { write_compression_table(path, {0, 2, 1}, 1); }, {path, "not dense", "compress[1] = 2"});
  expect_error([&] { write_compression_table(path, {0, -1}, 1); }, {path, "compress[1] = -1"});
  expect_error([&] { write_compression_table(path, {}, 1); }, {path, "empty"});
  EXPECT_FALSE(fs::exists(path));
}

}  // namespace
}  // namespace engram
