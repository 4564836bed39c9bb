// RMSNorm on the GPU, the CUDA side of kernels/rmsnorm.h. Rows take kVec = 4 values per access where
// the tensors allow (common.cuh), else one. The row's sum of squares and the backward's dot product
// are reduced in double (fixed tree order), rstd is rounded to float once and saved. The backward
// makes dx and dg's column sums in one pass over dy and x: dg adds its terms in double in
// add_column_sums' chunks and order, so it is what add_column_sums of those terms gives.
// y may be bf16 (kernels::matmul_operand_dtype): a norm whose output only products read writes it in
// the dtype they take instead of f32 then a rounded copy (the backward reads x, never y).
#include <type_traits>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/rmsnorm.h"

namespace engram::kernels::cuda {

namespace {

// One warp per row (a row is the model width, a few hundred values: a handful of accesses per lane,
// no block-wide reduction), lanes taking kVec values at a time; the row is read again for y, from L1.
// y is f32 or bf16 (rounded to nearest even from the f32 value).
template <int kVec, class Out>
__global__ void rmsnorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ g, float eps,
                                       int64_t rows, int64_t dim, Out* __restrict__ y, float* __restrict__ rstd) {
  const int64_t first = int64_t{lane_id()} * kVec, stride = int64_t{kWarpSize} * kVec;
  for (int64_t row = first_warp_row(); row < rows; row += warp_row_stride()) {
    const float* xr = x + row * dim;
    double sum_sq = 0.0;
    for (int64_t j = first; j < dim; j += stride) {
      const Floats<kVec> xj = load_floats<kVec>(xr + j);
#pragma unroll
      for (int c = 0; c < kVec; ++c) sum_sq += static_cast<double>(xj.v[c]) * xj.v[c];
    }
    sum_sq = warp_all_reduce(sum_sq, Sum{});
    const float rs = static_cast<float>(1.0 / sqrt(sum_sq / static_cast<double>(dim) + eps));
    if (lane_id() == 0) rstd[row] = rs;
    Out* yr = y + row * dim;
    for (int64_t j = first; j < dim; j += stride) {
      const Floats<kVec> xj = load_floats<kVec>(xr + j), gj = load_floats<kVec>(g + j);
      Floats<kVec> yj;
#pragma unroll
      for (int c = 0; c < kVec; ++c) yj.v[c] = xj.v[c] * rs * gj.v[c];
      store_floats<kVec>(yr + j, yj);
    }
  }
}

// Rows of a chunk whose dots the backward makes at a time (two per warp), and rows whose loads a thread
// issues before it uses them (more bytes in flight than one row at a time).
constexpr int kTileRows = 2 * kWarpsPerBlock, kRowBatch = 4;

// One block per chunk of rows (RowChunks), tile by tile: each warp makes the dot Σ_j dy_j·g_j·x_j of
// its rows (double, warp tree); then each thread takes kVec columns down the tile's rows in ascending
// order (the rows come again from L1 or L2), writing
//   dx_k = rs·g_k·dy_k − rs³·x_k/D · dot (see kernels/cpu/rmsnorm.cpp), plus dx_residual_k when given
// (kResidual), added after the float rounding as on the CPU, and adding dg's terms dy·x·rs (double)
// into the chunk's partial sums, which stay in partial[chunk, col] between tiles.
template <int kVec, bool kResidual>
__global__ void rmsnorm_backward_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                        const float* __restrict__ g, const float* __restrict__ rstd, int64_t rows,
                                        int64_t dim, int64_t chunk_rows, const float* __restrict__ dx_residual,
                                        float* __restrict__ dx, double* partial) {
  // Two tiles' rs and rs³·dot/D: a warp may make the next tile's while others still read this one's.
  __shared__ double tile_rs[2][kTileRows], tile_coef[2][kTileRows];
  const int64_t first_row = blockIdx.x * chunk_rows, end_row = min(rows, first_row + chunk_rows);
  double* chunk_sums = partial + blockIdx.x * dim;
  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  for (int64_t tile = first_row; tile < end_row; tile += kTileRows) {
    const int64_t tile_end = min(end_row, tile + kTileRows);
    const int buffer = static_cast<int>((tile - first_row) / kTileRows % 2);
    for (int64_t row = tile + warp; row < tile_end; row += kWarpsPerBlock) {  // the same for a warp's lanes
      const float *dyr = dy + row * dim, *xr = x + row * dim;
      double dot = 0.0;
      for (int64_t j = int64_t{lane_id()} * kVec; j < dim; j += kWarpSize * kVec) {
        const Floats<kVec> dyj = load_floats<kVec>(dyr + j), gj = load_floats<kVec>(g + j),
                           xj = load_floats<kVec>(xr + j);
#pragma unroll
        for (int c = 0; c < kVec; ++c) dot += static_cast<double>(dyj.v[c]) * gj.v[c] * xj.v[c];
      }
      dot = warp_reduce(dot, Sum{});
      if (lane_id() == 0) {
        const double rs = rstd[row];
        tile_rs[buffer][row - tile] = rs;
        tile_coef[buffer][row - tile] = rs * rs * rs * dot / static_cast<double>(dim);
      }
    }
    __syncthreads();  // the tile's dots are in, and the previous tile's, whose buffer the next fills, are read
    for (int64_t j = int64_t{threadIdx.x} * kVec; j < dim; j += int64_t{kThreads} * kVec) {
      double sums[kVec];
#pragma unroll
      for (int c = 0; c < kVec; ++c) sums[c] = tile == first_row ? 0.0 : chunk_sums[j + c];
      const Floats<kVec> gj = load_floats<kVec>(g + j);
      for (int64_t batch = tile; batch < tile_end; batch += kRowBatch) {
        const int n = static_cast<int>(min(int64_t{kRowBatch}, tile_end - batch));
        Floats<kVec> dyb[kRowBatch], xb[kRowBatch];
        [[maybe_unused]] Floats<kVec> resb[kRowBatch];
#pragma unroll
        for (int b = 0; b < kRowBatch && b < n; ++b) {
          const int64_t at = (batch + b) * dim + j;
          dyb[b] = load_floats<kVec>(dy + at), xb[b] = load_floats<kVec>(x + at);
          if constexpr (kResidual) resb[b] = load_floats<kVec>(dx_residual + at);
        }
#pragma unroll
        for (int b = 0; b < kRowBatch && b < n; ++b) {
          const int i = static_cast<int>(batch - tile) + b;
          const double rs = tile_rs[buffer][i], coef = tile_coef[buffer][i];
          Floats<kVec> dxb;
#pragma unroll
          for (int c = 0; c < kVec; ++c) {
            sums[c] += static_cast<double>(dyb[b].v[c]) * xb[b].v[c] * rs;
            dxb.v[c] = static_cast<float>(rs * gj.v[c] * dyb[b].v[c] - coef * xb[b].v[c]);
            if constexpr (kResidual) dxb.v[c] += resb[b].v[c];
          }
          store_floats<kVec>(dx + (batch + b) * dim + j, dxb);
        }
      }
#pragma unroll
      for (int c = 0; c < kVec; ++c) chunk_sums[j + c] = sums[c];
    }
  }
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd) {
  check_on_cuda("rmsnorm_forward", x, g, y, rstd);
  const int64_t rows = x.rows(), dim = x.cols();
  checks::rmsnorm_forward(x, g, y, rstd);
  if (rows == 0) return;
  const bool vectors = four_at_a_time(dim, x, g, y);
  with_f32_or_bf16(y, "rmsnorm_forward y", [&](auto* out) {
    using Out = std::remove_pointer_t<decltype(out)>;
    const auto kernel = vectors ? rmsnorm_forward_kernel<4, Out> : rmsnorm_forward_kernel<1, Out>;
    kernel<<<grid_for_rows(rows), kThreads, 0, compute_stream()>>>(x.data<float>(), g.data<float>(), eps, rows, dim,
                                                                   out, rstd.data<float>());
  });
  EG_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg, const Tensor& dx_residual) {
  check_on_cuda("rmsnorm_backward", dy, x, g, rstd, dx, dg, dx_residual);
  const int64_t rows = x.rows(), dim = x.cols();
  checks::rmsnorm_backward(dy, x, g, rstd, dx, dg, dx_residual);
  if (rows == 0 || dim == 0) return;
  const bool residual = dx_residual.defined();
  const bool vectors = four_at_a_time(dim, dy, x, g, dx) && (!residual || aligned_16(dx_residual));
  const RowChunks chunks(rows);
  const Tensor partial = device_doubles(chunks.count * dim);
  const auto kernel = vectors ? (residual ? rmsnorm_backward_kernel<4, true> : rmsnorm_backward_kernel<4, false>)
                              : (residual ? rmsnorm_backward_kernel<1, true> : rmsnorm_backward_kernel<1, false>);
  kernel<<<static_cast<unsigned>(chunks.count), kThreads, 0, compute_stream()>>>(
      dy.data<float>(), x.data<float>(), g.data<float>(), rstd.data<float>(), rows, dim, chunks.rows_per_chunk,
      residual ? dx_residual.data<float>() : nullptr, dx.data<float>(), doubles(partial));
  EG_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  add_chunk_sums(partial, chunks.count, dim, dg.data<float>());
}

}  // namespace engram::kernels::cuda
