#include "runtime/caching_allocator.h"

#include <algorithm>

#include "runtime/error.h"

namespace engram {
namespace {

constexpr size_t kGranule = 64;

// Size classes: multiples of 64 bytes up to 4 KiB, then four classes per power of two (2^k,
// 1.25·2^k, 1.5·2^k, 1.75·2^k). Buffers whose size changes a little from step to step (e.g. the
// unique table rows of a batch) then share a class and reuse each other's blocks; at most 25% of a
// block is unused.
size_t size_class(size_t bytes) {
  const size_t aligned = std::max(kGranule, (bytes + kGranule - 1) / kGranule * kGranule);
  if (aligned <= 4096) return aligned;
  size_t power = 4096;
  while (power * 2 < aligned) power *= 2;  // power < aligned <= 2·power
  const size_t quarter = power / 4;
  return (aligned + quarter - 1) / quarter * quarter;
}

}  // namespace

BlockCache::BlockCache(const char* memory_name, RawAllocate raw_allocate, RawFree raw_free)
    : memory_name_(memory_name), raw_allocate_(raw_allocate), raw_free_(raw_free) {}

void* BlockCache::allocate(size_t bytes) {
  const size_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* ptr = nullptr;
  auto it = free_blocks_.find(size);
  if (it != free_blocks_.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    stats_.cached -= size;
  } else {
    ptr = raw_allocate_(size);
    if (ptr == nullptr && stats_.cached > 0) {  // blocks of other classes may make room
      free_cached_locked();
      ptr = raw_allocate_(size);
    }
    EG_CHECK(ptr != nullptr, "out of ", memory_name_, " memory allocating ", bytes, " bytes (", stats_.in_use,
             " bytes in use)");
  }
  stats_.in_use += size;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  return ptr;
}

void BlockCache::release(void* ptr, size_t bytes) {
  if (ptr == nullptr) return;
  const size_t size = size_class(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.in_use -= size;
  // The cache never holds more than the peak in use: a one-off size is returned to its source
  // instead of being kept forever.
  if (stats_.cached + size > stats_.peak_in_use) {
    raw_free_(ptr);
    return;
  }
  free_blocks_[size].push_back(ptr);
  stats_.cached += size;
}

MemoryStats BlockCache::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void BlockCache::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_in_use = stats_.in_use;
}

void BlockCache::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  free_cached_locked();
}

void BlockCache::free_cached_locked() {
  for (auto& [size, blocks] : free_blocks_)
    for (void* p : blocks) raw_free_(p);
  free_blocks_.clear();
  stats_.cached = 0;
}

}  // namespace engram
