// The depthwise causal dilated convolution on the GPU, the CUDA side of kernels/conv.h.
// y and dx: one block per row (b, t), threads over its channels, each summing the taps in
// ascending order as the CPU does.
// dw[i, c] = Σ over all B·T rows, a column sum of [B·T, W·D] in a fixed order of row chunks
// (add_column_sums: one thread per (chunk, tap, channel), then the chunks in order), in double and
// without atomics, so the result repeats bitwise and the B·T-long sum is spread over many blocks.
#include "kernels/checks.h"
#include "kernels/conv.h"
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

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

// dw's column j = i·D + c over rows [first, end), in order: dy[row, c]·x[row − (W−1−i)·dilation, c]
// for the rows whose t reaches back that far.
struct DwChunkSum {
  const float *dy, *x;
  int64_t steps, dim, width, dilation;
  __device__ double operator()(int64_t j, int64_t first, int64_t end) const {
    const int64_t i = j / dim, c = j % dim, back = (width - 1 - i) * dilation;
    double sum = 0.0;
    int64_t t = first % steps;
    for (int64_t row = first; row < end; ++row) {
      if (t >= back) sum += static_cast<double>(dy[row * dim + c]) * x[(row - back) * dim + c];
      if (++t == steps) t = 0;
    }
    return sum;
  }
};

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

  add_column_sums(DwChunkSum{dy.data<float>(), x.data<float>(), nt, d, width, dilation}, rows, width * d,
                  dw.data<float>());
}

}  // namespace engram::kernels::cuda
