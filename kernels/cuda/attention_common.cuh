#pragma once
// What the two CUDA attention paths share (included by kernels/cuda/attention.cu only): the problem's
// geometry as the kernels see it and one row's backward delta D_i = Σ_d dO_id·O_id (delta_of_row).
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

// Σ_d dO·O of one row of head_dim columns, in double as on the CPU, returned to every lane: lane l
// adds columns l, l + 32, …, then warp_reduce's fixed tree. dO is f32 (the float32 kernels) or bf16 (the
// tensor-core path: the dO its products read, so that D_i = Σ_j P_ij·dP_ij holds for the dP that path
// computes). O is f32, or bf16 where the tensor-core forward wrote it so (the O its products read).
template <class Dout, class Out>
__device__ double delta_of_row(const Dout* dout_row, const Out* out_row, int head_dim) {
  double dot = 0.0;
  for (int c = lane_id(); c < head_dim; c += kWarpSize)
    dot += static_cast<double>(static_cast<float>(dout_row[c])) * static_cast<float>(out_row[c]);
  return warp_all_reduce(dot, Sum{});
}

}  // namespace

}  // namespace engram::kernels::cuda
