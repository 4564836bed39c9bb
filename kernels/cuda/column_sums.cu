// The second stage of add_column_sums (kernels/cuda/common.cuh), compiled once: the chunks' partial
// sums added per column in ascending chunk order.
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

// A block per kChunkSumColumns columns. Its warps stage a tile of chunks in shared memory (coalesced
// rows, many loads in flight), then its first warp adds them, a lane per column, in ascending chunk
// order: the sum a thread walking its column's chunks would make, bit for bit, but with the loads
// spread over cols / 32 SMs rather than a thread per column on cols / 256 (at d_model 768, 3 SMs
// latency-bound: ≈ 26 µs a call on an H100).
__global__ void __launch_bounds__(kChunkSumThreads)
    add_chunk_sums_kernel(const double* partial, int64_t chunks, int64_t cols, float* out) {
  constexpr int kTileChunks = 64, kWarps = kChunkSumThreads / 32;
  __shared__ double tile[kTileChunks][kChunkSumColumns];  // 16 KB
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t col = blockIdx.x * int64_t{kChunkSumColumns} + lane;
  double sum = 0.0;
  for (int64_t first = 0; first < chunks; first += kTileChunks) {
    const int tile_chunks = static_cast<int>(min(int64_t{kTileChunks}, chunks - first));
    if (col < cols)
      for (int c = warp; c < tile_chunks; c += kWarps) tile[c][lane] = partial[(first + c) * cols + col];
    __syncthreads();
    if (warp == 0)
      for (int c = 0; c < tile_chunks; ++c) sum += tile[c][lane];
    __syncthreads();
  }
  if (warp == 0 && col < cols) out[col] += static_cast<float>(sum);
}

}  // namespace engram::kernels::cuda
