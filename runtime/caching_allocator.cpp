#include "runtime/caching_allocator.h"

#include <algorithm>

#include "runtime/error.h"

namespace engram {
namespace {

constexpr size_t kGranule = 64;
// The cache holds at most this many times the peak in use. Sizes that change every step (expert
// dispatch under expert parallelism) keep several classes of each buffer alive: 4 ranks with EP 4
// on configs/tiny.pbtxt returned 6,379 blocks in 40 steps at 1× (1,086 with the LRU order), none at
// 2× (docs/PERFORMANCE.md). One process training returns none at either.
constexpr size_t kBoundTimesPeak = 2;

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
  SizeClass& cls = classes_[size];
  cls.last_use = ++allocations_;
  if (!cls.blocks.empty()) {
    ptr = cls.blocks.back();
    cls.blocks.pop_back();
    stats_.cached -= size;
  } else {
    ptr = raw_allocate_(size);
    // Out of memory: blocks of other classes may make room, the least recently asked-for first, so
    // that the blocks a step keeps reusing go last.
    while (ptr == nullptr && evict_oldest_locked(size)) ptr = raw_allocate_(size);
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
  if (!make_room_locked(size)) {
    raw_free_(ptr);
    ++stats_.returned_blocks;
    return;
  }
  classes_[size].blocks.push_back(ptr);
  stats_.cached += size;
}

bool BlockCache::make_room_locked(size_t size) {
  while (stats_.cached + size > kBoundTimesPeak * stats_.peak_in_use)
    if (!evict_oldest_locked(size)) return false;
  return true;
}

bool BlockCache::evict_oldest_locked(size_t keep) {
  SizeClass* oldest = nullptr;
  size_t oldest_size = 0;
  for (auto& [class_size, cls] : classes_)
    if (class_size != keep && !cls.blocks.empty() && (!oldest || cls.last_use < oldest->last_use)) {
      oldest = &cls;
      oldest_size = class_size;
    }
  if (!oldest) return false;
  for (void* p : oldest->blocks) raw_free_(p);
  stats_.returned_blocks += oldest->blocks.size();
  stats_.cached -= oldest->blocks.size() * oldest_size;
  oldest->blocks.clear();
  return true;
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
  for (auto& [size, cls] : classes_) {
    for (void* p : cls.blocks) raw_free_(p);
    stats_.returned_blocks += cls.blocks.size();
    cls.blocks.clear();
  }
  stats_.cached = 0;
}

}  // namespace engram
