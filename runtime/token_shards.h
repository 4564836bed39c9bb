#pragma once
// Token shards: the binary files training and evaluation read (docs/DATA.md).
// Layout, little-endian, a 64-byte header then the tokens:
//   0  char[8] magic "ENGRAMTK"     8  u32 version (1)     12 u32 dtype (1 = u16, 2 = u32)
//   16 u64 token count              24 u64 tokenizer hash (FNV-1a 64 of the tokenizer model file)
//   32 u32 vocab size               36 u32 reserved (0)    40 u64 source UTF-8 bytes
//   48 u64 reserved (0)             56 u64 header checksum (CRC-32 of bytes 0..55, zero-extended)
// The file size must equal 64 + count · dtype size exactly (a truncated shard is rejected).
#include <cstdint>
#include <string>
#include <vector>

namespace engram {

struct ShardHeader {
  uint32_t version = 1;
  uint32_t dtype_bytes = 2;      // 2 (u16) or 4 (u32)
  uint64_t token_count = 0;
  uint64_t tokenizer_hash = 0;
  uint32_t vocab_size = 0;
  uint64_t source_bytes = 0;     // UTF-8 bytes of the text the tokens came from (for bits per byte)
};

// Writes atomically; u16 when vocab_size <= 65536, else u32.
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, uint64_t tokenizer_hash,
                       uint32_t vocab_size, uint64_t source_bytes);

// A shard read fully into memory, validated: magic, version, dtype, header checksum, exact size,
// every token < vocab_size. Errors name the path and what was wrong.
struct TokenShard {
  std::string path;
  ShardHeader header;
  std::vector<int32_t> tokens;
};
TokenShard read_token_shard(const std::string& path);

// Checks the shard was written with the tokenizer the model uses; the error names both hashes.
void check_shard_tokenizer(const TokenShard& shard, uint64_t tokenizer_hash, int64_t vocab_size);

}  // namespace engram
