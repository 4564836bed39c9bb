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

size_t rounded(size_t bytes) { return std::max(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment); }

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
  const size_t size = rounded(bytes);
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
  const size_t size = rounded(bytes);
  HostCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free_blocks[size].push_back(ptr);
  c.stats.in_use -= size;
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
