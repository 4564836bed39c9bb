#include "runtime/key_order.h"

#include <array>
#include <utility>

#include "runtime/error.h"

namespace engram {

namespace {
constexpr int kDigitBits = 11;
constexpr int64_t kBuckets = int64_t{1} << kDigitBits;
}  // namespace

Tensor stable_key_order(const int64_t* keys, int64_t n, int64_t max_key) {
  EG_ASSERT(n >= 0 && max_key >= 0, "stable_key_order: n ", n, ", max_key ", max_key);
  int bits = 0;
  while (bits < 63 && (max_key >> bits) != 0) ++bits;
  // (key, position) pairs, moved together so that every pass reads them in sequence. Each pass is a
  // counting sort by one more significant digit that keeps the order of equal digits, so after the
  // last pass the pairs are ordered by the whole key, ties by position.
  Tensor key = Tensor::empty({n}, DType::I64), position = Tensor::empty({n}, DType::I64);
  Tensor next_key = Tensor::empty({n}, DType::I64), next_position = Tensor::empty({n}, DType::I64);
  {
    int64_t* k = key.data<int64_t>();
    int64_t* p = position.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      EG_ASSERT(keys[i] >= 0 && keys[i] <= max_key, "stable_key_order: key ", keys[i], " at position ", i,
                " is outside [0, ", max_key, "]");
      k[i] = keys[i];
      p[i] = i;
    }
  }
  for (int shift = 0; shift < bits; shift += kDigitBits) {
    const int64_t* k = key.data<int64_t>();
    const int64_t* p = position.data<int64_t>();
    int64_t* to_key = next_key.data<int64_t>();
    int64_t* to_position = next_position.data<int64_t>();
    std::array<int64_t, kBuckets + 1> start{};
    for (int64_t i = 0; i < n; ++i) ++start[((k[i] >> shift) & (kBuckets - 1)) + 1];
    for (int64_t b = 0; b < kBuckets; ++b) start[b + 1] += start[b];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t to = start[(k[i] >> shift) & (kBuckets - 1)]++;
      to_key[to] = k[i];
      to_position[to] = p[i];
    }
    std::swap(key, next_key);
    std::swap(position, next_position);
  }
  return position;
}

}  // namespace engram
