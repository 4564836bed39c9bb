// Token shards: round trips in both dtypes checked against a byte-level reading of the documented
// layout, and every way a shard can be bad (each error names the file and what was wrong).
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "runtime/atomic_file.h"
#include "runtime/error.h"
#include "runtime/token_shards.h"
#include "tests/test_util.h"

namespace engram {
namespace {

namespace fs = std::filesystem;
using testing_util::expect_error;
using testing_util::read_le;
using testing_util::write_le;

std::string temp_path(const std::string& name) { return (testing_util::process_temp_dir() / name).string(); }

// Re-seals a header edited by a test, so that the check after the checksum is the one that fires.
void reseal_header(std::string& bytes) {
  write_le(bytes, 56, 8, ::crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), 56));
}

std::vector<int32_t> random_tokens(size_t n, uint32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(rng() % vocab);
  if (n > 0) t[0] = int32_t(vocab - 1);  // the largest id must survive the narrow dtype
  return t;
}

void check_round_trip(uint32_t vocab, size_t expected_dtype_bytes) {
  for (size_t n : {0, 1, 3, 7, 13, 33, 1001}) {
    const std::string path = temp_path("rt_" + std::to_string(vocab) + "_" + std::to_string(n) + ".bin");
    const std::vector<int32_t> tokens = random_tokens(n, vocab, uint32_t(n + vocab));
    const uint64_t hash = 0x0123456789ABCDEFull ^ n, source = 5 * n + 11;
    write_token_shard(path, tokens, hash, vocab, source);

    // The bytes, read by the documented layout.
    const std::string bytes = read_file(path);
    ASSERT_EQ(bytes.size(), 64 + n * expected_dtype_bytes);
    EXPECT_EQ(bytes.substr(0, 8), "ENGRAMTK");
    EXPECT_EQ(read_le(bytes, 8, 4), 1u);
    EXPECT_EQ(read_le(bytes, 12, 4), expected_dtype_bytes == 2 ? 1u : 2u);
    EXPECT_EQ(read_le(bytes, 16, 8), n);
    EXPECT_EQ(read_le(bytes, 24, 8), hash);
    EXPECT_EQ(read_le(bytes, 32, 4), vocab);
    EXPECT_EQ(read_le(bytes, 36, 4), 0u);
    EXPECT_EQ(read_le(bytes, 40, 8), source);
    EXPECT_EQ(read_le(bytes, 48, 8), 0u);
    EXPECT_EQ(read_le(bytes, 56, 8), ::crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), 56));
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(read_le(bytes, 64 + i * expected_dtype_bytes, expected_dtype_bytes), uint64_t(tokens[i]))
          << i;
    }

    const TokenShard shard = read_token_shard(path);
    EXPECT_EQ(shard.path, path);
    EXPECT_EQ(shard.tokens, tokens);
    EXPECT_EQ(shard.header.version, 1u);
    EXPECT_EQ(shard.header.dtype_bytes, expected_dtype_bytes);
    EXPECT_EQ(shard.header.token_count, n);
    EXPECT_EQ(shard.header.tokenizer_hash, hash);
    EXPECT_EQ(shard.header.vocab_size, vocab);
    EXPECT_EQ(shard.header.source_bytes, source);
    EXPECT_NO_THROW(check_shard_tokenizer(shard, hash, vocab));
  }
}

TEST(TokenShards, RoundTripU16) {
  check_round_trip(301, 2);
  check_round_trip(65536, 2);  // the largest vocabulary that fits u16
}

TEST(TokenShards, RoundTripU32) {
  check_round_trip(65537, 4);
  check_round_trip(200003, 4);
}

TEST(TokenShards, TruncatedShardNamesExpectedAndActualSize) {
  const std::string path = temp_path("truncated.bin");
  write_token_shard(path, random_tokens(1000, 500, 1), 7, 500, 4000);
  write_file_atomic(path, read_file(path).substr(0, 1500));
  expect_error([&] { read_token_shard(path); },
               {path, "truncated shard", "1000 tokens", "2064 bytes", "1500 bytes"});
}

TEST(TokenShards, TrailingBytesAreRejected) {
  const std::string path = temp_path("trailing.bin");
  write_token_shard(path, random_tokens(10, 500, 2), 7, 500, 40);
  write_file_atomic(path, read_file(path) + "x");
  expect_error([&] { read_token_shard(path); },
               {path, "trailing bytes", "10 tokens", "84 bytes", "85 bytes"});
}

TEST(TokenShards, FileShorterThanHeader) {
  const std::string path = temp_path("tiny.bin");
  write_file_atomic(path, "ENGRAMTK");
  expect_error([&] { read_token_shard(path); }, {path, "8 bytes", "64-byte header"});
}

TEST(TokenShards, BadMagic) {
  const std::string path = temp_path("magic.bin");
  write_token_shard(path, random_tokens(5, 500, 3), 7, 500, 20);
  std::string bytes = read_file(path);
  bytes[0] = 'X';
  write_file_atomic(path, bytes);
  expect_error([&] { read_token_shard(path); }, {path, "not a token shard", "ENGRAMTK", "XNGRAMTK"});
  bytes[1] = '\x01';  // unprintable bytes are shown escaped
  write_file_atomic(path, bytes);
  expect_error([&] { read_token_shard(path); }, {path, "X\\x01GRAMTK"});
}

TEST(TokenShards, BadHeaderChecksum) {
  const std::string path = temp_path("crc.bin");
  write_token_shard(path, random_tokens(5, 500, 4), 7, 500, 20);
  std::string bytes = read_file(path);
  bytes[40] ^= 1;  // source_bytes: a field no other check would notice
  write_file_atomic(path, bytes);
  expect_error([&] { read_token_shard(path); }, {path, "corrupt token shard header", "checksum"});
}

TEST(TokenShards, UnsupportedVersionAndDtype) {
  const std::string path = temp_path("version.bin");
  write_token_shard(path, random_tokens(5, 500, 5), 7, 500, 20);
  const std::string good = read_file(path);

  std::string bytes = good;
  write_le(bytes, 8, 4, 2);
  reseal_header(bytes);
  write_file_atomic(path, bytes);
  expect_error([&] { read_token_shard(path); }, {path, "version 2", "expected 1"});

  bytes = good;
  write_le(bytes, 12, 4, 3);
  reseal_header(bytes);
  write_file_atomic(path, bytes);
  expect_error([&] { read_token_shard(path); }, {path, "dtype 3"});
}

TEST(TokenShards, TokenOutsideVocabulary) {
  const std::string path = temp_path("oov.bin");
  write_token_shard(path, random_tokens(9, 300, 6), 7, 300, 36);
  std::string bytes = read_file(path);
  write_le(bytes, 64 + 2 * 4, 2, 300);  // the payload is not under the header checksum
  write_file_atomic(path, bytes);
  expect_error([&] { read_token_shard(path); }, {path, "token 300 at position 4", "vocab size 300"});
}

TEST(TokenShards, WriterRejectsOutOfRangeTokensAndLeavesNoFile) {
  const std::string path = temp_path("rejected.bin");
  fs::remove(path);
  expect_error(
      [&] {
        write_token_shard(path, {1, 2, 300}, 7, 300, 3);
      },
      {path, "token 300 at position 2", "[0, 300)"});
  expect_error([&] { write_token_shard(path, {1, -1}, 7, 300, 3); }, {path, "token -1 at position 1"});
  EXPECT_FALSE(fs::exists(path));
  for (const auto& entry : fs::directory_iterator(fs::path(path).parent_path())) {
    EXPECT_EQ(entry.path().filename().string().find("rejected.bin.tmp"), std::string::npos) << entry.path();
  }
}

TEST(TokenShards, MissingFileIsNamed) {
  const std::string path = temp_path("does_not_exist.bin");
  expect_error([&] { read_token_shard(path); }, {path, "cannot open"});
}

TEST(TokenShards, WrongTokenizerNamesBothHashes) {
  const std::string path = temp_path("hash.bin");
  write_token_shard(path, random_tokens(5, 500, 7), 0xAAAA000000000001ull, 500, 20);
  const TokenShard shard = read_token_shard(path);
  expect_error([&] { check_shard_tokenizer(shard, 0xBBBB000000000002ull, 500); },
               {path, "different tokenizer", "0xaaaa000000000001", "0xbbbb000000000002"});
  expect_error([&] { check_shard_tokenizer(shard, 0xAAAA000000000001ull, 512); },
               {path, "vocab size 500", "512"});
}

}  // namespace
}  // namespace engram
