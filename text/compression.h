#pragma once
// The Engram tokenizer compression table (MODEL.md §4.1), built with ICU, and its file format.
#include <cstdint>
#include <string>
#include <vector>

namespace engram {

class Tokenizer;

// The normalization key of one decoded piece: NFKC → NFD → drop Mn → lowercase → collapse
// whitespace runs to one space → trim; whitespace-only → " "; a result of "" keeps `decoded`.
std::string compression_key(const std::string& decoded);

// compress[id] for every raw id: pieces decoded ("▁" → space; byte pieces → their raw piece
// string), keyed, canonical ids assigned densely in order of first appearance.
std::vector<int32_t> build_compression_table(const Tokenizer& tokenizer);
// Same, from explicit decoded piece texts (for tests and other tokenizers).
std::vector<int32_t> build_compression_table(const std::vector<std::string>& decoded_pieces);

// File: "ENGRAMCT" magic, u32 version 1, u32 V, u32 V', u32 reserved, u64 tokenizer hash,
// V × i32, u32 CRC-32 of everything before it. Written atomically.
void write_compression_table(const std::string& path, const std::vector<int32_t>& table, uint64_t tokenizer_hash);
struct CompressionTable {
  std::vector<int32_t> table;
  uint64_t tokenizer_hash = 0;
};
CompressionTable read_compression_table(const std::string& path);  // validated; errors name the path

}  // namespace engram
