// The compression table file (docs/DATA.md), little-endian:
//   0 char[8] "ENGRAMCT"   8 u32 version (1)   12 u32 V   16 u32 V'   20 u32 reserved (0)
//   24 u64 tokenizer hash   32 V × i32 compress[id]   32+4V u32 CRC-32 of bytes [0, 32+4V)
#include <cstring>

#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/error.h"
#include "text/compression.h"

namespace engram {

namespace {

constexpr char kMagic[8] = {'E', 'N', 'G', 'R', 'A', 'M', 'C', 'T'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 32;

template <class T>
void put_le(std::string& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    out.push_back(static_cast<char>(static_cast<uint64_t>(v) >> (8 * i)));
}
template <class T>
T get_le(const std::string& in, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(in[at + i])) << (8 * i);
  return static_cast<T>(v);
}

// V' = number of canonical ids; the table must use exactly 0..V'-1, each first appearing in order.
uint32_t dense_size(const std::vector<int32_t>& table, const std::string& path) {
  int32_t next = 0;
  for (size_t id = 0; id < table.size(); ++id) {
    const int32_t c = table[id];
    EG_CHECK(c >= 0 && c <= next, path, ": compression table is not dense: compress[", id, "] = ", c,
             " but canonical ids must be assigned in order of first appearance (expected 0..", next, ")");
    if (c == next) ++next;
  }
  return static_cast<uint32_t>(next);
}

}  // namespace

void write_compression_table(const std::string& path, const std::vector<int32_t>& table,
                             uint64_t tokenizer_hash) {
  EG_CHECK(!table.empty(), path, ": compression table is empty");
  const uint32_t compressed = dense_size(table, path);
  std::string out;
  out.reserve(kHeaderBytes + 4 * table.size() + 4);
  out.append(kMagic, sizeof kMagic);
  put_le<uint32_t>(out, kVersion);
  put_le<uint32_t>(out, static_cast<uint32_t>(table.size()));
  put_le<uint32_t>(out, compressed);
  put_le<uint32_t>(out, 0);
  put_le<uint64_t>(out, tokenizer_hash);
  for (const int32_t c : table) put_le<int32_t>(out, c);
  put_le<uint32_t>(out, crc32(out.data(), out.size()));
  write_file_atomic(path, out);
}

CompressionTable read_compression_table(const std::string& path) {
  const std::string in = read_file(path);
  EG_CHECK(in.size() >= kHeaderBytes + 4, path, ": not a compression table: the file has ", in.size(),
           " bytes, fewer than the ", kHeaderBytes + 4, " of an empty one");
  EG_CHECK(std::memcmp(in.data(), kMagic, sizeof kMagic) == 0, path,
           ": not a compression table: magic is not \"ENGRAMCT\"");
  const uint32_t version = get_le<uint32_t>(in, 8);
  EG_CHECK(version == kVersion, path, ": compression table version ", version, " is not supported (expected ",
           kVersion, ")");
  const uint32_t vocab = get_le<uint32_t>(in, 12);
  const uint32_t compressed = get_le<uint32_t>(in, 16);
  EG_CHECK(vocab > 0, path, ": compression table has V = 0");
  const uint64_t expected_size = kHeaderBytes + 4ull * vocab + 4;
  EG_CHECK(in.size() == expected_size, path, ": compression table of V = ", vocab, " should have ",
           expected_size, " bytes but the file has ", in.size());
  const uint32_t stored_crc = get_le<uint32_t>(in, in.size() - 4);
  const uint32_t actual_crc = crc32(in.data(), in.size() - 4);
  EG_CHECK(stored_crc == actual_crc, path, ": corrupt compression table: checksum is ", stored_crc,
           " but the contents give ", actual_crc);

  CompressionTable result;
  result.tokenizer_hash = get_le<uint64_t>(in, 24);
  result.table.resize(vocab);
  for (uint32_t id = 0; id < vocab; ++id) result.table[id] = get_le<int32_t>(in, kHeaderBytes + 4ull * id);
  const uint32_t actual_compressed = dense_size(result.table, path);
  EG_CHECK(actual_compressed == compressed, path, ": compression table header says V' = ", compressed,
           " but the table uses ", actual_compressed, " canonical ids");
  return result;
}

}  // namespace engram
