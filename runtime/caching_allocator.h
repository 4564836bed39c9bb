#pragma once
// The block cache behind the host and the device allocator (internal to runtime/): requests are
// rounded up to size classes, freed blocks are kept per class and handed out again, and current
// and peak bytes are counted. Where the memory comes from is the caller's pair of functions.
// The cache never holds more than twice the peak in use: a block released over that bound first
// makes room by returning the blocks of the classes asked for least recently (sizes a step no longer
// uses, e.g. expert loads of earlier steps), and is returned itself only if that is not enough.
// Returning the released block instead would keep stale classes and free the live one, to be
// allocated again next step: on a GPU each cudaFree waits for the whole device, mid-step. When the
// source is out of memory, cached classes are returned in the same order, one at a time, until the
// allocation succeeds.
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/allocator.h"

namespace engram {

class BlockCache {
 public:
  using RawAllocate = void* (*)(size_t bytes);  // nullptr when the memory is exhausted
  using RawFree = void (*)(void* ptr);

  // memory_name ("host", "device") appears in the out-of-memory message.
  BlockCache(const char* memory_name, RawAllocate raw_allocate, RawFree raw_free);

  void* allocate(size_t bytes);
  void release(void* ptr, size_t bytes);  // `bytes` as passed to allocate
  MemoryStats stats();
  void reset_peak();
  void empty_cache();  // returns every cached block to its source

 private:
  // A size class's cached blocks and when the class was last asked for (a count of allocate calls).
  struct SizeClass {
    std::vector<void*> blocks;
    uint64_t last_use = 0;
  };

  void free_cached_locked();
  // Returns the cached blocks of the least recently asked-for classes other than `size` to the
  // source until a block of class `size` fits under the cache's bound; false if it does not even then.
  bool make_room_locked(size_t size);
  // Returns the cached blocks of the least recently asked-for class other than `keep` to the source;
  // false if there are none.
  bool evict_oldest_locked(size_t keep);

  const char* memory_name_;
  RawAllocate raw_allocate_;
  RawFree raw_free_;
  std::mutex mutex_;
  std::unordered_map<size_t, SizeClass> classes_;  // by size
  uint64_t allocations_ = 0;
  MemoryStats stats_;
};

}  // namespace engram
