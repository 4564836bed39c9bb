#include "runtime/cuda/check.h"

#include <string>

namespace engram::detail {

void throw_cuda_error(const char* call, cudaError_t status, const char* file, int line) {
  throw_error(file, line,
              concat("CUDA call ", call, " failed: ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")"),
              true);
}

void throw_cublas_error(const char* call, cublasStatus_t status, const char* file, int line) {
  throw_error(file, line,
              concat("cuBLAS call ", call, " failed: ", cublasLtGetStatusName(status), " (",
                     cublasLtGetStatusString(status), ")"),
              true);
}

}  // namespace engram::detail
