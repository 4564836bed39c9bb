#pragma once
// Error checks for CUDA runtime and cuBLASLt calls (CUDA builds only; includes CUDA headers). A
// failing call throws engram::Error naming the call as written, CUDA's name and description of the
// error, and the source location.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "runtime/error.h"

namespace engram::detail {
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t status, const char* file, int line);
[[noreturn]] void throw_cublas_error(const char* call, cublasStatus_t status, const char* file, int line);
}  // namespace engram::detail

#define EG_CUDA_CHECK(call)                                                          \
  do {                                                                               \
    const cudaError_t eg_cuda_status = (call);                                       \
    if (eg_cuda_status != cudaSuccess)                                               \
      ::engram::detail::throw_cuda_error(#call, eg_cuda_status, __FILE__, __LINE__); \
  } while (0)

#define EG_CUBLAS_CHECK(call)                                                            \
  do {                                                                                   \
    const cublasStatus_t eg_cublas_status = (call);                                      \
    if (eg_cublas_status != CUBLAS_STATUS_SUCCESS)                                       \
      ::engram::detail::throw_cublas_error(#call, eg_cublas_status, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch (kernel_name a string literal): a bad launch configuration, and any earlier
// asynchronous fault, shows up here named after the kernel instead of at some later unrelated call.
// Run with CUDA_LAUNCH_BLOCKING=1 to have every fault reported by the launch that caused it.
#define EG_CUDA_CHECK_LAUNCH(kernel_name)                                                               \
  do {                                                                                                  \
    const cudaError_t eg_cuda_status = cudaGetLastError();                                              \
    if (eg_cuda_status != cudaSuccess)                                                                  \
      ::engram::detail::throw_cuda_error("launch of " kernel_name, eg_cuda_status, __FILE__, __LINE__); \
  } while (0)
