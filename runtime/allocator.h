#pragma once
// Memory for tensors, cached by size class when freed (runtime/caching_allocator.h). A training
// step allocates the same sizes every step; reusing blocks avoids mapping fresh pages (and taking
// their page faults) each time on the host, and cudaMalloc/cudaFree (which synchronize the device)
// on a GPU.
#include <cstddef>

namespace engram {

struct MemoryStats {
  size_t in_use = 0;       // bytes held by live tensors (size classes, so a little above the requests)
  size_t peak_in_use = 0;  // maximum of in_use since start (or the last reset_peak)
  size_t cached = 0;       // bytes in freed blocks kept for reuse
  size_t returned_blocks = 0;  // blocks handed back to the source since start (cudaFree on a GPU:
                               // each waits for the whole device)
};
using HostMemoryStats = MemoryStats;

// Host memory: 64-byte aligned blocks.
void* host_allocate(size_t bytes);
void host_release(void* ptr, size_t bytes);  // `bytes` as passed to host_allocate
HostMemoryStats host_memory_stats();
void host_reset_peak();
void host_empty_cache();  // returns every cached block to the system

#ifdef ENGRAM_HAVE_CUDA
// Memory on this process's CUDA device (runtime/cuda/device_allocator.cpp), same size classes and
// statistics; blocks are at least 256-byte aligned. A released block may be handed out again at
// once: that is safe because every kernel and copy runs in order on the one compute stream. A block
// used on another stream (a group's communication stream) must be synchronized before it is released.
void* device_allocate(size_t bytes);
void device_release(void* ptr, size_t bytes);
MemoryStats device_memory_stats();
void device_reset_peak();
void device_empty_cache();
#endif

}  // namespace engram
