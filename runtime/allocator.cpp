#include "runtime/allocator.h"

#include <cstdlib>

#include "runtime/caching_allocator.h"

namespace engram {
namespace {

constexpr size_t kAlignment = 64;  // every size class is a multiple of it, as aligned_alloc requires

void* aligned_allocate(size_t bytes) { return std::aligned_alloc(kAlignment, bytes); }
void system_free(void* ptr) { std::free(ptr); }

BlockCache& cache() {
  static BlockCache* c = new BlockCache("host", aligned_allocate, system_free);  // never destroyed:
  return *c;  // tensors may outlive static destructors
}

}  // namespace

void* host_allocate(size_t bytes) { return cache().allocate(bytes); }
void host_release(void* ptr, size_t bytes) { cache().release(ptr, bytes); }
HostMemoryStats host_memory_stats() { return cache().stats(); }
void host_reset_peak() { cache().reset_peak(); }
void host_empty_cache() { cache().empty_cache(); }

}  // namespace engram
