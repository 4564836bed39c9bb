#pragma once
// Checksums and content hashes used by every engram file format.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace engram {

// CRC-32 (zlib / IEEE 802.3, as Python's zlib.crc32): integrity of files we write. Chain calls
// by passing the previous value as `crc`.
uint32_t crc32(const void* data, size_t bytes, uint32_t crc = 0);

// FNV-1a 64 of bytes: identity of an input (e.g. which tokenizer model a shard was made with).
uint64_t fnv1a64_bytes(std::string_view bytes);

// "0x" and 16 lowercase hex digits: how messages and reports print a 64-bit hash.
std::string hex64(uint64_t value);

}  // namespace engram
