// The second stage of add_column_sums (kernels/cuda/common.cuh), compiled once: the chunks' partial
// sums added per column in ascending chunk order.
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

__global__ void add_chunk_sums_kernel(const double* partial, int64_t chunks, int64_t cols, float* out) {
  for (int64_t col = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; col < cols;
       col += int64_t{gridDim.x} * blockDim.x) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * cols + col];
    out[col] += static_cast<float>(sum);
  }
}

}  // namespace engram::kernels::cuda
