#include "runtime/token_shards.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "runtime/atomic_file.h"
#include "runtime/checksum.h"
#include "runtime/error.h"

namespace engram {

namespace {

constexpr char kMagic[8] = {'E', 'N', 'G', 'R', 'A', 'M', 'T', 'K'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kChecksummedBytes = 56;
constexpr uint32_t kDtypeU16 = 1, kDtypeU32 = 2;

// Explicit little-endian field access, so the format does not depend on the host.
template <class T>
void put_le(unsigned char* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i)
    p[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
}
template <class T>
T get_le(const unsigned char* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return static_cast<T>(v);
}

// The first bytes of a file, printable: "\xNN" for anything but printable ASCII.
std::string printable_prefix(const std::string& bytes, size_t n) {
  std::string out;
  for (size_t i = 0; i < std::min(n, bytes.size()); ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    char escaped[5];
    std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
    out += (c >= 0x20 && c < 0x7f && c != '\\') ? std::string(1, static_cast<char>(c)) : std::string(escaped);
  }
  return out;
}

std::string read_whole_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  EG_CHECK(f != nullptr, path, ": cannot open token shard (", std::strerror(errno), ")");
  EG_CHECK(std::fseek(f.get(), 0, SEEK_END) == 0, path, ": cannot seek (", std::strerror(errno), ")");
  const long size = std::ftell(f.get());
  EG_CHECK(size >= 0, path, ": cannot tell the file size (", std::strerror(errno), ")");
  std::rewind(f.get());
  std::string bytes(static_cast<size_t>(size), '\0');
  EG_CHECK(std::fread(bytes.data(), 1, bytes.size(), f.get()) == bytes.size(), path, ": read failed");
  return bytes;
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, uint64_t tokenizer_hash,
                       uint32_t vocab_size, uint64_t source_bytes) {
  EG_CHECK(vocab_size > 0, path, ": token shard vocab size must be > 0");
  const bool narrow = vocab_size <= 65536;
  const size_t dtype_bytes = narrow ? 2 : 4;

  std::string out(kHeaderBytes + tokens.size() * dtype_bytes, '\0');
  auto* h = reinterpret_cast<unsigned char*>(out.data());
  std::memcpy(h, kMagic, sizeof kMagic);
  put_le<uint32_t>(h + 8, kVersion);
  put_le<uint32_t>(h + 12, narrow ? kDtypeU16 : kDtypeU32);
  put_le<uint64_t>(h + 16, tokens.size());
  put_le<uint64_t>(h + 24, tokenizer_hash);
  put_le<uint32_t>(h + 32, vocab_size);
  put_le<uint64_t>(h + 40, source_bytes);
  put_le<uint64_t>(h + 56, crc32(h, kChecksummedBytes));

  unsigned char* p = h + kHeaderBytes;
  for (size_t i = 0; i < tokens.size(); ++i, p += dtype_bytes) {
    const int32_t t = tokens[i];
    EG_CHECK(t >= 0 && static_cast<uint32_t>(t) < vocab_size, path, ": token ", t, " at position ", i,
             " is outside the vocabulary [0, ", vocab_size, ")");
    if (narrow)
      put_le<uint16_t>(p, static_cast<uint16_t>(t));
    else
      put_le<uint32_t>(p, static_cast<uint32_t>(t));
  }
  write_file_atomic(path, out);
}

TokenShard read_token_shard(const std::string& path) {
  const std::string bytes = read_whole_file(path);
  const auto* h = reinterpret_cast<const unsigned char*>(bytes.data());
  EG_CHECK(bytes.size() >= kHeaderBytes, path, ": not a token shard: the file has ", bytes.size(),
           " bytes, fewer than the ", kHeaderBytes, "-byte header");
  EG_CHECK(std::memcmp(h, kMagic, sizeof kMagic) == 0, path,
           ": not a token shard: magic is not \"ENGRAMTK\" (first 8 bytes: \"", printable_prefix(bytes, 8),
           "\")");
  const uint64_t stored_crc = get_le<uint64_t>(h + 56);
  const uint32_t actual_crc = crc32(h, kChecksummedBytes);
  EG_CHECK(stored_crc == actual_crc, path, ": corrupt token shard header: checksum is ", stored_crc,
           " but the header bytes give ", actual_crc);

  TokenShard shard;
  shard.path = path;
  ShardHeader& hd = shard.header;
  hd.version = get_le<uint32_t>(h + 8);
  EG_CHECK(hd.version == kVersion, path, ": token shard version ", hd.version, " is not supported (expected ",
           kVersion, ")");
  const uint32_t dtype = get_le<uint32_t>(h + 12);
  EG_CHECK(dtype == kDtypeU16 || dtype == kDtypeU32, path, ": token shard dtype ", dtype,
           " is not 1 (u16) or 2 (u32)");
  hd.dtype_bytes = dtype == kDtypeU16 ? 2 : 4;
  hd.token_count = get_le<uint64_t>(h + 16);
  hd.tokenizer_hash = get_le<uint64_t>(h + 24);
  hd.vocab_size = get_le<uint32_t>(h + 32);
  hd.source_bytes = get_le<uint64_t>(h + 40);
  EG_CHECK(hd.vocab_size > 0, path, ": token shard vocab size is 0");

  // Compared as a quotient so that a huge (corrupt) count cannot overflow the expected size.
  const uint64_t payload = bytes.size() - kHeaderBytes;
  const bool exact = payload % hd.dtype_bytes == 0 && payload / hd.dtype_bytes == hd.token_count;
  if (!exact) {
    const bool short_file = payload / hd.dtype_bytes < hd.token_count;
    const std::string expected =
        hd.token_count <= (UINT64_MAX - kHeaderBytes) / hd.dtype_bytes
            ? std::to_string(kHeaderBytes + hd.token_count * hd.dtype_bytes) + " bytes"
            : "more bytes than a file can hold";
    EG_FAIL(path, short_file ? ": truncated shard" : ": token shard has trailing bytes", ": header says ",
            hd.token_count, " tokens (", expected, ") but the file has ", bytes.size(), " bytes");
  }

  shard.tokens.resize(hd.token_count);
  const unsigned char* p = h + kHeaderBytes;
  for (uint64_t i = 0; i < hd.token_count; ++i, p += hd.dtype_bytes) {
    const uint32_t t = hd.dtype_bytes == 2 ? get_le<uint16_t>(p) : get_le<uint32_t>(p);
    EG_CHECK(t < hd.vocab_size, path, ": token ", t, " at position ", i, " is >= the vocab size ",
             hd.vocab_size);
    shard.tokens[i] = static_cast<int32_t>(t);
  }
  return shard;
}

void check_shard_tokenizer(const TokenShard& shard, uint64_t tokenizer_hash, int64_t vocab_size) {
  EG_CHECK(shard.header.tokenizer_hash == tokenizer_hash, shard.path,
           ": shard was written with a different tokenizer (shard tokenizer hash ",
           hex64(shard.header.tokenizer_hash), ", expected ", hex64(tokenizer_hash),
           "): re-run engram-data with this tokenizer");
  EG_CHECK(static_cast<int64_t>(shard.header.vocab_size) == vocab_size, shard.path, ": shard vocab size ",
           shard.header.vocab_size, " does not match the model's vocab size ", vocab_size);
}

}  // namespace engram
