// Small elementwise and reduction kernels on the GPU (F32), the CUDA side of kernels/elementwise.h.
// Column sums (bias_grad) add in double in a fixed order of row chunks (add_column_sums), and
// sum_squares reduces in a fixed tree: both repeat bitwise but differ from the CPU's row- or
// index-order sums by rounding.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"

namespace engram::kernels::cuda {

namespace {

void check_same_numel(const Tensor& a, const Tensor& b, const char* what) {
  EG_ASSERT(a.numel() == b.numel(), what, ": ", shape_str(a.shape()), " and ", shape_str(b.shape()),
            " differ in size");
}

__global__ void add_kernel(float* y, const float* x, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    y[i] += alpha * x[i];
}

__global__ void add_out_of_place_kernel(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void scale_kernel(float* y, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    y[i] *= alpha;
}

__global__ void silu_forward_kernel(const float* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    y[i] = x[i] * sigmoid(x[i]);
}

__global__ void silu_backward_kernel(const float* dy, const float* x, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float s = sigmoid(x[i]);
    dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
  }
}

__global__ void add_bias_rows_kernel(float* y, const float* bias, int64_t cols, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    y[i] += bias[i % cols];
}

// bias_grad's term: dy[row, col].
struct RowValue {
  const float* dy;
  int64_t cols;
  __device__ double operator()(int64_t row, int64_t col) const { return dy[row * cols + col]; }
};

// Pass 1: one double partial per block (grid-stride); pass 2 (sum_in_fixed_order_kernel) sums them.
__global__ void sum_squares_partials_kernel(const float* x, int64_t n, double* partials) {
  double sum = 0.0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    sum += static_cast<double>(x[i]) * x[i];
  sum = block_reduce(sum, Sum{}, 0.0);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

}  // namespace

void add_(Tensor& y, const Tensor& x, float alpha) {
  check_on_cuda("add_", y, x);
  check_same_numel(y, x, "add_");
  add_kernel<<<grid_for(y.numel()), kThreads, 0, compute_stream()>>>(y.data<float>(), x.data<float>(), alpha,
                                                                      y.numel());
  EG_CUDA_CHECK_LAUNCH("add_kernel");
}

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  check_on_cuda("add", a, b, out);
  check_same_numel(a, b, "add");
  check_same_numel(out, a, "add out");
  add_out_of_place_kernel<<<grid_for(out.numel()), kThreads, 0, compute_stream()>>>(
      a.data<float>(), b.data<float>(), out.data<float>(), out.numel());
  EG_CUDA_CHECK_LAUNCH("add_out_of_place_kernel");
}

void scale_(Tensor& y, float alpha) {
  check_on_cuda("scale_", y);
  scale_kernel<<<grid_for(y.numel()), kThreads, 0, compute_stream()>>>(y.data<float>(), alpha, y.numel());
  EG_CUDA_CHECK_LAUNCH("scale_kernel");
}

void silu_forward(const Tensor& x, Tensor& y) {
  check_on_cuda("silu_forward", x, y);
  check_same_numel(x, y, "silu_forward");
  silu_forward_kernel<<<grid_for(x.numel()), kThreads, 0, compute_stream()>>>(x.data<float>(), y.data<float>(),
                                                                               x.numel());
  EG_CUDA_CHECK_LAUNCH("silu_forward_kernel");
}

void silu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) {
  check_on_cuda("silu_backward", dy, x, dx);
  check_same_numel(dy, x, "silu_backward");
  check_same_numel(dx, x, "silu_backward");
  silu_backward_kernel<<<grid_for(x.numel()), kThreads, 0, compute_stream()>>>(dy.data<float>(), x.data<float>(),
                                                                                dx.data<float>(), x.numel());
  EG_CUDA_CHECK_LAUNCH("silu_backward_kernel");
}

void add_bias_rows(Tensor& y, const Tensor& bias) {
  check_on_cuda("add_bias_rows", y, bias);
  const int64_t cols = y.cols();
  EG_ASSERT(bias.numel() == cols, "add_bias_rows: bias ", shape_str(bias.shape()), " for rows of ",
            shape_str(y.shape()));
  if (y.numel() == 0) return;
  add_bias_rows_kernel<<<grid_for(y.numel()), kThreads, 0, compute_stream()>>>(y.data<float>(), bias.data<float>(),
                                                                                cols, y.numel());
  EG_CUDA_CHECK_LAUNCH("add_bias_rows_kernel");
}

void bias_grad(const Tensor& dy, Tensor& dbias) {
  check_on_cuda("bias_grad", dy, dbias);
  const int64_t cols = dy.cols();
  EG_ASSERT(dbias.numel() == cols, "bias_grad: dbias ", shape_str(dbias.shape()), " for rows of ",
            shape_str(dy.shape()));
  add_column_sums(SumOfRowTerms<RowValue>{{dy.data<float>(), cols}}, dy.rows(), cols, dbias.data<float>());
}

double sum_squares(const Tensor& x) { return sum_squares_each({x}).front(); }

std::vector<double> sum_squares_each(const std::vector<Tensor>& xs) {
  std::vector<double> sums(xs.size(), 0.0);
  if (xs.empty()) return sums;
  constexpr int kPartials = 1024;  // fixed, so the summation order does not depend on the device
  const int64_t n = static_cast<int64_t>(xs.size());
  const Tensor partials = device_doubles(kPartials * n), totals = device_doubles(n);
  for (int64_t i = 0; i < n; ++i) {
    const Tensor& x = xs[i];
    check_on_cuda("sum_squares", x);
    double* mine = doubles(partials) + i * kPartials;
    sum_squares_partials_kernel<<<kPartials, kThreads, 0, compute_stream()>>>(x.data<float>(), x.numel(), mine);
    EG_CUDA_CHECK_LAUNCH("sum_squares_partials_kernel");
    sum_in_fixed_order_kernel<<<1, kThreads, 0, compute_stream()>>>(mine, int64_t{kPartials}, doubles(totals) + i);
    EG_CUDA_CHECK_LAUNCH("sum_in_fixed_order_kernel");
  }
  copy_to_host_and_wait(sums.data(), totals.raw(), totals.nbytes());
  return sums;
}

}  // namespace engram::kernels::cuda
