// The NCCL communicator's rank-order sum (parallel/ordered_sum.h): one thread per element walks the
// blocks in order. Only additions, which nvcc never contracts, so each element's result is the
// left-to-right sum a host loop computes, bit for bit.
#include "parallel/ordered_sum.h"

#include "kernels/cuda/common.cuh"

namespace engram {

namespace {

template <class T>
__global__ void ordered_block_sum_kernel(const T* in, T* out, int64_t n, int blocks) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    T sum = in[i];
    for (int b = 1; b < blocks; ++b) sum += in[b * n + i];
    out[i] = sum;
  }
}

}  // namespace

void ordered_block_sum(const void* in, void* out, int64_t n, int blocks, CommType type, cudaStream_t stream) {
  EG_ASSERT(n >= 0 && blocks >= 1, "ordered_block_sum of ", blocks, " blocks of ", n);
  if (n == 0) return;
  using kernels::cuda::grid_for;
  using kernels::cuda::kThreads;
  switch (type) {
    case CommType::F32:
      ordered_block_sum_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<const float*>(in),
                                                                      static_cast<float*>(out), n, blocks);
      break;
    case CommType::F64:
      ordered_block_sum_kernel<<<grid_for(n), kThreads, 0, stream>>>(static_cast<const double*>(in),
                                                                      static_cast<double*>(out), n, blocks);
      break;
    default:
      EG_ASSERT(false, "ordered_block_sum of ", comm_type_name(type), " elements (f32 or f64 only)");
  }
  EG_CUDA_CHECK_LAUNCH("ordered_block_sum_kernel");
}

}  // namespace engram
