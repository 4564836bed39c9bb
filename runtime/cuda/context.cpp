#include "runtime/cuda/context.h"

#include "runtime/cuda/check.h"
#include "runtime/cuda/device.h"

namespace engram {
namespace {

CudaContext* create_context() {
  EG_CHECK(cuda_device_count() > 0,
           "no CUDA device is available (no GPU, or no driver); tensors on cuda need one. Run on the CPU instead.");
  auto* ctx = new CudaContext();
  EG_CUDA_CHECK(cudaGetDevice(&ctx->device));
  EG_CUDA_CHECK(cudaSetDevice(ctx->device));
  // Non-blocking: it does not wait on work that someone else queues on the legacy default stream.
  EG_CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->compute, cudaStreamNonBlocking));
  EG_CUBLAS_CHECK(cublasLtCreate(&ctx->cublaslt));
  ctx->workspace_bytes = kCublasWorkspaceBytes;
  EG_CUDA_CHECK(cudaMalloc(&ctx->workspace, ctx->workspace_bytes));
  return ctx;
}

}  // namespace

CudaContext& cuda_context() {
  static CudaContext* ctx = create_context();  // thread-safe; retried on the next call if it threw
  return *ctx;
}

}  // namespace engram
