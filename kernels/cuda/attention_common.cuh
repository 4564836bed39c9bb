#pragma once
// What the two CUDA attention paths share (included by kernels/cuda/attention.cu only): the problem's
// geometry as the kernels see it, the backward's row deltas D_i = Σ_d dO_id·O_id, and the launch of
// one block per tile of rows of each (head, batch).
#include <cuda_bf16.h>

#include <climits>
#include <cmath>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

using checks::AttentionDims;

// Sizes of the problem, as the kernels see them.
struct Geometry {
  int seq, heads, head_dim;
  float scale;  // 1/√d_h, computed as the CPU does

  // Offset of (b, t, h, 0) in a [B, T, H, d_h] tensor.
  __device__ int64_t at(int b, int t, int h) const {
    return ((static_cast<int64_t>(b) * seq + t) * heads + h) * head_dim;
  }
  // Offset of (b, h, 0) in a [B, H, T] tensor (lse, delta).
  __device__ int64_t row_stats(int b, int h) const { return (static_cast<int64_t>(b) * heads + h) * seq; }
};

Geometry geometry_of(const AttentionDims& d, const char* kernel) {
  // Heads and batch index grid dimensions y and z.
  EG_CHECK(d.seq <= INT_MAX && d.heads <= 65535 && d.batch <= 65535, kernel, ": B ", d.batch, ", T ", d.seq, ", H ",
           d.heads, " exceed the CUDA kernel's limits (T < 2^31, B and H <= 65535)");
  return {static_cast<int>(d.seq), static_cast<int>(d.heads), static_cast<int>(d.head_dim),
          1.0f / std::sqrt(static_cast<float>(d.head_dim))};
}

// delta[b, h, t] = Σ_d dO·O of row (b, t, h), in double as on the CPU: one warp per row. dO is f32
// (the float32 kernels) or bf16 (the tensor-core path: the dO its products read, so that
// D_i = Σ_j P_ij·dP_ij holds for the dP that path computes).
template <class Dout>
__global__ void attention_delta_kernel(const Dout* dout, const float* out, Geometry g, int64_t rows, float* delta) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; r < rows; r += warps) {
    const Dout* dout_row = dout + r * g.head_dim;
    const float* out_row = out + r * g.head_dim;
    double dot = 0.0;
    for (int c = lane; c < g.head_dim; c += 32)
      dot += static_cast<double>(static_cast<float>(dout_row[c])) * out_row[c];
    dot = warp_reduce(dot, Sum{});
    if (lane == 0) {
      const int64_t h = r % g.heads, bt = r / g.heads;  // r = (b·T + t)·H + h
      delta[(bt / g.seq * g.heads + h) * g.seq + bt % g.seq] = static_cast<float>(dot);
    }
  }
}

// The row deltas [B, H, T] of the backward, from an f32 or bf16 dout. Freed by the caller on return:
// the allocator reuses the block only for work queued after the kernels that read it.
Tensor row_deltas(const Tensor& dout, const Tensor& out, const AttentionDims& d, const Geometry& g) {
  Tensor delta = Tensor::empty({d.batch, d.heads, d.seq}, DType::F32, Device::CUDA);
  const int64_t rows = d.batch * d.seq * d.heads;
  const auto launch = [&](const auto* dout_data) {
    attention_delta_kernel<<<grid_for(rows * 32), kThreads, 0, compute_stream()>>>(dout_data, out.data<float>(), g,
                                                                                   rows, delta.data<float>());
  };
  if (dout.dtype() == DType::BF16)
    launch(static_cast<const __nv_bfloat16*>(dout.raw()));
  else
    launch(dout.data<float>());
  EG_CUDA_CHECK_LAUNCH("attention_delta_kernel");
  return delta;
}

// Launches kernel on blocks of `threads` threads, one per tile of `rows_per_block` rows of each
// (head, batch), with `shared_bytes` of dynamic shared memory (beyond the default 48 KB needs opting in).
template <class Kernel, class... Args>
void launch_on_tiles(Kernel* kernel, int rows_per_block, int threads, size_t shared_bytes, const AttentionDims& d,
                     Args... args) {
  EG_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes)));
  const dim3 grid(static_cast<unsigned>((d.seq + rows_per_block - 1) / rows_per_block), static_cast<unsigned>(d.heads),
                  static_cast<unsigned>(d.batch));
  kernel<<<grid, threads, shared_bytes, compute_stream()>>>(args...);
}

}  // namespace

}  // namespace engram::kernels::cuda
