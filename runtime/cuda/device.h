#pragma once
// The CUDA backend as CPU-side code sees it, without CUDA headers (so Tensor and the tests can use
// it): is a device there, copies between host and device, zero fill. Declared in CUDA builds only
// (runtime/cuda/device.cpp); Storage's device memory comes from runtime/allocator.h.
#include <cstddef>

#include "runtime/tensor.h"

namespace engram {
// The cuBLASLt workspace each process holds on its device, outside the allocator's statistics
// (32 MiB: what NVIDIA recommends for cuBLASLt on Hopper; enough for every architecture we build).
// Declared in every build: engram-plan counts it for CUDA runs.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
}  // namespace engram

#ifdef ENGRAM_HAVE_CUDA
namespace engram {

// Usable CUDA devices; 0 when there is no GPU or no driver. Never throws; asks CUDA once.
int cuda_device_count();

// Copies `bytes` from src to dst (either may be on the host or the device), queued on the compute
// stream after all earlier work. A copy that touches host memory has finished when this returns;
// device-to-device copies stay asynchronous.
void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);

void cuda_zero(void* dst, size_t bytes);  // device memory, queued on the compute stream

void cuda_synchronize();  // waits for all work queued on the compute stream

}  // namespace engram
#endif
