#include "runtime/allocator.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/error.h"

namespace engram {
namespace {

constexpr size_t kAlignment = 64;

// Size classes: multiples of 64 bytes up to 4 KiB, then four classes per power of two (2^k,
// 1.25·2^k, 1.5·2^k, 1.75·2^k). Buffers whose size changes a little from step to step (e.g. the
// unique table rows of a batch) then share a class and reuse each other's blocks; at most 25% of a
// block is unused.
size_t size_class(size_t bytes) {
  const size_t aligned = std::max(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  if (aligned <= 4096) return aligned;
  size_t power = 4096;
  while (power * 2 < aligned) power *= 2;  // power < aligned <= 2·power
  const size_t quarter = power / 4;
  return (aligned + quarter - 1) / quarter * quarter;
}

struct HostCache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
  HostMemoryStats stats;
};

HostCache& cache() {
  static HostCache* c = new HostCache();  // never destroyed: tensors may outlive static destructors
  return *c;
}

}  // namespace

void* host_allocate(size_t bytes) {
  const size_t size = size_class(bytes);
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  void* ptr = nullptr;
  auto it = c.free_blocks.find(size);
  if (it != c.free_blocks.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    c.stats.cached -= size;
  } else {
    ptr = std::aligned_alloc(kAlignment, size);
    EG_CHECK(ptr != nullptr, "out of host memory allocating ", bytes, " bytes (", c.stats.in_use,
             " bytes in use)");
  }
  c.stats.in_use += size;
  c.stats.peak_in_use = std::max(c.stats.peak_in_use, c.stats.in_use);
  return ptr;
}

void host_release(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  const size_t size = size_class(bytes);
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.in_use -= size;
  // The cache never holds more than the peak in use: a one-off size is returned to the system
  // instead of being kept forever.
  if (c.stats.cached + size > c.stats.peak_in_use) {
    std::free(ptr);
    return;
  }
  c.free_blocks[size].push_back(ptr);
  c.stats.cached += size;
}

HostMemoryStats host_memory_stats() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.stats;
}

void host_reset_peak() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.stats.peak_in_use = c.stats.in_use;
}

void host_empty_cache() {
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [size, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.stats.cached = 0;
}

}  // namespace engram
