#pragma once
// cp.async (PTX ISA, sm_80 or newer): copies from global to shared memory that bypass registers, in
// commit groups a thread waits for; a __syncthreads after the wait makes every thread's copies
// visible to the block. Included by kernels/cuda/*.cu only.
#include <cstdint>

namespace engram::kernels::cuda {

namespace {

// 16 bytes from global to shared memory (both 16-byte aligned); src_bytes 0 writes 16 zeros instead
// (rows past a matrix) and reads nothing.
__device__ inline void cp_async_16(uint32_t shared_address, const void* global, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address), "l"(global),
               "r"(src_bytes)
               : "memory");
}
// 16 bytes from src when `inside`, else 16 zeros (rows or columns past a matrix; src is not read).
__device__ inline void cp_async_16_or_zeros(uint32_t shared_address, const void* src, bool inside) {
  cp_async_16(shared_address, src, inside ? 16 : 0);
}
// Closes the thread's copies issued since the last commit into one group.
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of the thread's groups are still in flight.
template <int kPending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace

}  // namespace engram::kernels::cuda
