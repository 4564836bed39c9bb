#include "runtime/cuda/device.h"

#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"

namespace engram {

int cuda_device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // "no driver" / "no device" is an answer here, not an error to keep
      n = 0;
    }
    return n;
  }();
  return count;
}

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t stream = cuda_context().compute;
  EG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
  // Waiting after every copy that touches the host keeps the host buffer's lifetime simple (pageable
  // or, later, pinned alike); these copies move batches and test data, not per-kernel traffic.
  if (dst_device == Device::CPU || src_device == Device::CPU) EG_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void cuda_zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  EG_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cuda_context().compute));
}

void cuda_synchronize() { EG_CUDA_CHECK(cudaStreamSynchronize(cuda_context().compute)); }

}  // namespace engram
