#pragma once
// Host memory for tensors: 64-byte aligned blocks, cached by size class when freed. A training step
// allocates the same sizes every step; reusing blocks avoids mapping fresh pages (and taking
// their page faults) each time, which otherwise costs more than the arithmetic on a CPU.
#include <cstddef>

namespace engram {

struct HostMemoryStats {
  size_t in_use = 0;       // bytes held by live tensors
  size_t peak_in_use = 0;  // maximum of in_use since start (or the last reset_peak)
  size_t cached = 0;       // bytes in freed blocks kept for reuse
};

void* host_allocate(size_t bytes);
void host_release(void* ptr, size_t bytes);  // `bytes` as passed to host_allocate
HostMemoryStats host_memory_stats();
void host_reset_peak();
void host_empty_cache();  // returns every cached block to the system

}  // namespace engram
