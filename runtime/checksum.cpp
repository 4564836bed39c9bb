#include "runtime/checksum.h"

#include <zlib.h>

#include <algorithm>
#include <cinttypes>
#include <climits>
#include <cstdio>

namespace engram {

uint32_t crc32(const void* data, size_t bytes, uint32_t crc) {
  // zlib takes at most UINT_MAX bytes per call.
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (bytes > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(bytes, UINT_MAX));
    c = ::crc32(c, p, chunk);
    p += chunk;
    bytes -= chunk;
  }
  return static_cast<uint32_t>(c);
}

uint64_t fnv1a64_bytes(std::string_view bytes) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

std::string hex64(uint64_t value) {
  char text[19];  // "0x" + 16 digits + NUL
  std::snprintf(text, sizeof text, "0x%016" PRIx64, value);
  return text;
}

}  // namespace engram
