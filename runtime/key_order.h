#pragma once
// Host index work on integer keys (table row ids to deduplicate, row gradients to reduce): the
// positions of the keys in ascending key order, equal keys in position order. An LSD radix sort in
// 11-bit digits, as many as `max_key` needs, on scratch tensors from the caching host allocator:
// linear in the count, and no fresh pages per call (docs/PERFORMANCE.md, "Host index work").
#include <cstdint>

#include "runtime/tensor.h"

namespace engram {

// Positions 0..n-1 ordered by keys[position] ascending, ties by position (a stable sort), as an I64
// host tensor [n]. Every key must be in [0, max_key].
Tensor stable_key_order(const int64_t* keys, int64_t n, int64_t max_key);

}  // namespace engram
