#pragma once
// The block cache behind the host and the device allocator (internal to runtime/): requests are
// rounded up to size classes, freed blocks are kept per class and handed out again, and current
// and peak bytes are counted. Where the memory comes from is the caller's pair of functions.
#include <cstddef>
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
  void free_cached_locked();

  const char* memory_name_;
  RawAllocate raw_allocate_;
  RawFree raw_free_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;  // size class -> blocks
  MemoryStats stats_;
};

}  // namespace engram
