// Opting kernels in to more than the default 48 KB of dynamic shared memory (kernels/cuda/common.cuh's
// launch_with_shared): cudaFuncSetAttribute once per kernel and size, not on every launch.
#include <cuda_runtime.h>

#include <mutex>
#include <unordered_map>

#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

void allow_dynamic_shared(const void* kernel, size_t bytes) {
  static std::mutex mutex;
  static std::unordered_map<const void*, size_t> allowed;  // one device per process
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& current = allowed[kernel];
  if (bytes <= current) return;
  EG_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  current = bytes;
}

}  // namespace engram::kernels::cuda
