// Small elementwise and reduction kernels on the GPU (F32), the CUDA side of kernels/elementwise.h.
// Column sums (bias_grad) add in double in a fixed order of row chunks (add_column_sums), and
// sum_squares in fixed chunks and trees: both repeat bitwise but differ from the CPU's row- or
// index-order sums by rounding.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/checks.h"
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

// sum_squares_each: every tensor cut into chunks of kSquaresChunk values (fixed, so the summation
// order does not depend on the device), one block per chunk of every tensor of a batch in one launch,
// then each tensor's chunk sums added in chunk order. A step's gradient norm is one or two launches
// of each kernel instead of two per parameter, most of which were blocks with nothing to read.
constexpr int64_t kSquaresChunk = 32768;
constexpr int kSquaresBatch = 128;  // tensors per launch: the table travels in the kernel parameters

struct SquaresBatch {
  const float* x[kSquaresBatch];
  int64_t n[kSquaresBatch];
  int64_t first_chunk[kSquaresBatch + 1];  // tensor i owns chunks [first_chunk[i], first_chunk[i + 1])
  int count;
};
static_assert(sizeof(SquaresBatch) <= 4096, "the table outgrows the kernel parameters");

// partials[chunk] = Σ x² over the chunk (double), four values per load where x is 16-byte aligned
// (chunks start at multiples of four values), then block_reduce.
__global__ void sum_squares_chunks_kernel(const __grid_constant__ SquaresBatch b, double* partials) {
  const int64_t chunk = blockIdx.x;
  // The tensor whose chunks hold this one (tensors without values own none).
  const int i = last_start_at_most(b.first_chunk, b.count, chunk);
  const float* x = b.x[i];
  const int64_t begin = (chunk - b.first_chunk[i]) * kSquaresChunk, end = min(b.n[i], begin + kSquaresChunk);
  const bool vectors = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int64_t vector_end = vectors ? begin + (end - begin) / 4 * 4 : begin;
  double sum = 0.0;
  for (int64_t j = begin + 4 * int64_t{threadIdx.x}; j < vector_end; j += 4 * int64_t{blockDim.x}) {
    const Floats<4> f = load_floats<4>(x + j);
    sum += static_cast<double>(f.v[0]) * f.v[0] + static_cast<double>(f.v[1]) * f.v[1] +
           static_cast<double>(f.v[2]) * f.v[2] + static_cast<double>(f.v[3]) * f.v[3];
  }
  for (int64_t j = vector_end + threadIdx.x; j < end; j += blockDim.x) sum += static_cast<double>(x[j]) * x[j];
  sum = block_reduce(sum, Sum{}, 0.0);
  if (threadIdx.x == 0) partials[chunk] = sum;
}

// totals[i] = Σ partials of tensor i's chunks, in chunk order: one thread per tensor.
__global__ void sum_chunk_partials_kernel(const __grid_constant__ SquaresBatch b, const double* partials,
                                          double* totals) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= b.count) return;
  double sum = 0.0;
  for (int64_t c = b.first_chunk[i]; c < b.first_chunk[i + 1]; ++c) sum += partials[c];
  totals[i] = sum;
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

void copy_into_columns(const Tensor& src, Tensor& dst, int64_t first_column) {
  check_on_cuda("copy_into_columns", src, dst);
  checks::copy_into_columns(src, dst, first_column);
  if (src.numel() == 0) return;
  const size_t value = dtype_size(src.dtype());
  EG_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(dst.raw()) + static_cast<size_t>(first_column) * value,
                                  static_cast<size_t>(dst.dim(1)) * value, src.raw(),
                                  static_cast<size_t>(src.dim(1)) * value, static_cast<size_t>(src.dim(1)) * value,
                                  static_cast<size_t>(src.dim(0)), cudaMemcpyDeviceToDevice, compute_stream()));
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
  for (const Tensor& x : xs) check_on_cuda("sum_squares", x);
  const Tensor totals = device_doubles(static_cast<int64_t>(xs.size()));
  for (size_t first = 0; first < xs.size(); first += kSquaresBatch) {
    SquaresBatch b{};
    b.count = static_cast<int>(std::min<size_t>(kSquaresBatch, xs.size() - first));
    for (int i = 0; i < b.count; ++i) {
      const Tensor& x = xs[first + i];
      b.x[i] = x.data<float>();
      b.n[i] = x.numel();
      b.first_chunk[i + 1] = b.first_chunk[i] + (x.numel() + kSquaresChunk - 1) / kSquaresChunk;
    }
    const int64_t chunks = b.first_chunk[b.count];
    // Freed at the end of the iteration, which only work queued later can reuse.
    const Tensor partials = device_doubles(std::max<int64_t>(chunks, 1));
    if (chunks > 0) {
      EG_CHECK(chunks <= INT32_MAX, "sum_squares_each: ", chunks, " chunks exceed one launch");
      sum_squares_chunks_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, compute_stream()>>>(
          b, doubles(partials));
      EG_CUDA_CHECK_LAUNCH("sum_squares_chunks_kernel");
    }
    sum_chunk_partials_kernel<<<1, kSquaresBatch, 0, compute_stream()>>>(b, doubles(partials),
                                                                          doubles(totals) + first);
    EG_CUDA_CHECK_LAUNCH("sum_chunk_partials_kernel");
  }
  copy_to_host_and_wait(sums.data(), totals.raw(), totals.nbytes());
  return sums;
}

}  // namespace engram::kernels::cuda
