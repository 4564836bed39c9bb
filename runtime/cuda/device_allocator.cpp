// Device memory through the shared block cache (runtime/caching_allocator.h).
#include "runtime/allocator.h"
#include "runtime/caching_allocator.h"
#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"

namespace engram {
namespace {

void* cuda_allocate(size_t bytes) {
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, bytes);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: the cache frees its blocks and tries again
    return nullptr;
  }
  EG_CUDA_CHECK(status);
  return ptr;
}

// Called from Storage's destructor, which must not throw. cudaFree fails only when the context is
// already broken (a sticky fault, or the runtime unloading at exit); the next checked call reports it.
void cuda_free(void* ptr) { (void)cudaFree(ptr); }

BlockCache& cache() {
  static BlockCache* c = new BlockCache("device", cuda_allocate, cuda_free);  // never destroyed:
  return *c;  // tensors may outlive static destructors
}

}  // namespace

void* device_allocate(size_t bytes) {
  cuda_context();  // the device must be chosen (and present) before the first cudaMalloc
  return cache().allocate(bytes);
}
void device_release(void* ptr, size_t bytes) { cache().release(ptr, bytes); }
MemoryStats device_memory_stats() { return cache().stats(); }
void device_reset_peak() { cache().reset_peak(); }
void device_empty_cache() { cache().empty_cache(); }

}  // namespace engram
