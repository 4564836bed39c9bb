// The depthwise causal dilated convolution on the GPU, the CUDA side of kernels/conv.h.
// y and dx: one block per row (b, t), threads over its channels, each summing the taps in
// ascending order as the CPU does.
// dw[i, c] = Σ over all B·T rows: the rows are cut into chunks (their size depends on the shape
// only), one thread per (chunk, channel) sums its chunk in double in row order into a scratch
// buffer, then one thread per (tap, channel) adds the chunks in ascending order. No atomics, so
// the result repeats bitwise, and the B·T-long sum is spread over many blocks.
#include <algorithm>

#include "kernels/checks.h"
#include "kernels/conv.h"
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

// dw's row chunks: at least kMinChunkRows rows each (enough work per thread), and at most
// kMaxChunks of them (bounds the scratch buffer at kMaxChunks·W·D doubles).
constexpr int64_t kMinChunkRows = 64;
constexpr int64_t kMaxChunks = 256;

// out[b, t] = Σ_i w[i] ⊙ in[b, t + (W−1−i)·shift], terms outside [0, T) left out, taps in ascending
// order. shift = −dilation is the forward (in = x, out = y); shift = +dilation is dx (in = dy): dx[t]
// gathers the outputs that read x[t]. One block per row (b, t) of [B·T, D], threads over channels.
__global__ void conv_taps_kernel(const float* in, const float* w, int64_t steps, int64_t dim, int64_t width,
                                 int64_t shift, float* out) {
  const int64_t row = blockIdx.x, t = row % steps;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    float acc = 0.0f;
    for (int64_t i = 0; i < width; ++i) {
      const int64_t offset = (width - 1 - i) * shift;
      if (t + offset >= 0 && t + offset < steps) acc += w[i * dim + c] * in[(row + offset) * dim + c];
    }
    out[row * dim + c] = acc;
  }
}

// partial[chunk, i, c] = Σ_{rows of the chunk, in order} dy[row, c]·x[row − (W−1−i)·dilation, c]
// over the rows whose t reaches back that far. Grid: x over channels, y over chunks.
__global__ void conv_dw_partial_kernel(const float* dy, const float* x, int64_t rows, int64_t steps, int64_t dim,
                                       int64_t width, int64_t dilation, int64_t chunk_rows, double* partial) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= dim) return;
  const int64_t chunk = blockIdx.y;
  const int64_t first = chunk * chunk_rows, end = first + chunk_rows < rows ? first + chunk_rows : rows;
  for (int64_t i = 0; i < width; ++i) {
    const int64_t back = (width - 1 - i) * dilation;
    double sum = 0.0;
    int64_t t = first % steps;
    for (int64_t row = first; row < end; ++row) {
      if (t >= back) sum += static_cast<double>(dy[row * dim + c]) * x[(row - back) * dim + c];
      if (++t == steps) t = 0;
    }
    partial[(chunk * width + i) * dim + c] = sum;
  }
}

// dw[j] += Σ_chunk partial[chunk, j] in ascending chunk order, j = i·D + c.
__global__ void conv_dw_sum_kernel(const double* partial, int64_t chunks, int64_t taps_by_dim, float* dw) {
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < taps_by_dim;
       j += int64_t{gridDim.x} * blockDim.x) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * taps_by_dim + j];
    dw[j] += static_cast<float>(sum);
  }
}

}  // namespace

void causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, Tensor& y) {
  check_on_cuda("causal_conv_forward", x, w, y);
  const auto [nb, nt, d, width] = checks::causal_conv_forward(x, w, dilation, y);
  const int64_t rows = nb * nt;
  if (rows * d == 0) return;
  conv_taps_kernel<<<static_cast<unsigned>(rows), kThreads, 0, compute_stream()>>>(
      x.data<float>(), w.data<float>(), nt, d, width, -int64_t{dilation}, y.data<float>());
  EG_CUDA_CHECK_LAUNCH("conv_taps_kernel");
}

void causal_conv_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int dilation, Tensor& dx, Tensor& dw) {
  check_on_cuda("causal_conv_backward", dy, x, w, dx, dw);
  const auto [nb, nt, d, width] = checks::causal_conv_backward(dy, x, w, dilation, dx, dw);
  const int64_t rows = nb * nt;
  if (rows * d == 0) return;
  cudaStream_t stream = compute_stream();
  conv_taps_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(dy.data<float>(), w.data<float>(), nt, d,
                                                                         width, dilation, dx.data<float>());
  EG_CUDA_CHECK_LAUNCH("conv_taps_kernel");

  const int64_t chunk_rows = std::max(kMinChunkRows, (rows + kMaxChunks - 1) / kMaxChunks);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  // Doubles in 8-byte elements (Tensor has no f64 dtype).
  Tensor partial = Tensor::empty({chunks, width, d}, DType::I64, Device::CUDA);
  const dim3 partial_grid(static_cast<unsigned>((d + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
  conv_dw_partial_kernel<<<partial_grid, kThreads, 0, stream>>>(dy.data<float>(), x.data<float>(), rows, nt, d, width,
                                                                dilation, chunk_rows,
                                                                static_cast<double*>(partial.raw()));
  EG_CUDA_CHECK_LAUNCH("conv_dw_partial_kernel");
  conv_dw_sum_kernel<<<grid_for(width * d), kThreads, 0, stream>>>(static_cast<const double*>(partial.raw()), chunks,
                                                                   width * d, dw.data<float>());
  EG_CUDA_CHECK_LAUNCH("conv_dw_sum_kernel");
}

}  // namespace engram::kernels::cuda
