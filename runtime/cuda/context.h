#pragma once
// This process's CUDA context (CUDA builds only; includes CUDA headers, so only CUDA-specific
// sources include it): one device; the compute stream, on which every kernel, copy and cuBLASLt
// call runs in issue order (which is what lets the device allocator reuse a freed block at once);
// and the cuBLASLt handle with its workspace. Collectives run on their group's own communication
// stream (parallel/nccl_communicator.cpp), which meets the compute stream through events.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace engram {

struct CudaContext {
  int device = 0;
  cudaStream_t compute = nullptr;
  cublasLtHandle_t cublaslt = nullptr;
  void* workspace = nullptr;  // cuBLASLt scratch; from cudaMalloc, outside the allocator's statistics
  size_t workspace_bytes = 0;
};

// Made on first use for the device current on the calling thread (cudaSetDevice before, e.g. to
// the local rank's GPU) and never destroyed: tensors may outlive static destructors. Throws
// engram::Error when no CUDA device is available.
CudaContext& cuda_context();

}  // namespace engram
