// RMSNorm on the GPU, the CUDA side of kernels/rmsnorm.h. One block per row; the row's sum of squares
// and the backward's dot product are reduced in double (fixed tree order), rstd is rounded to float
// once and saved, and dg's column sums add in double in a fixed order of row chunks (add_column_sums).
// y may be bf16 (kernels::matmul_operand_dtype): a norm whose output only products read writes it in
// the dtype they take instead of f32 then a rounded copy (the backward reads x, never y).
#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/rmsnorm.h"

namespace engram::kernels::cuda {

namespace {

// y is f32 or bf16 (rounded to nearest even from the f32 value).
template <class Out>
__global__ void rmsnorm_forward_kernel(const float* x, const float* g, float eps, int64_t dim, Out* y, float* rstd) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  double sum_sq = 0.0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) sum_sq += static_cast<double>(xr[j]) * xr[j];
  sum_sq = block_reduce(sum_sq, Sum{}, 0.0);
  const float rs = static_cast<float>(1.0 / sqrt(sum_sq / static_cast<double>(dim) + eps));
  if (threadIdx.x == 0) rstd[row] = rs;
  Out* yr = y + row * dim;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = static_cast<Out>(xr[j] * rs * g[j]);
}

// dx_k = rs·g_k·dy_k − rs³·x_k/D · Σ_j dy_j·g_j·x_j (see kernels/cpu/rmsnorm.cpp), plus
// dx_residual_k when given (null: none), added after the float rounding as on the CPU.
__global__ void rmsnorm_dx_kernel(const float* dy, const float* x, const float* g, const float* rstd, int64_t dim,
                                  const float* dx_residual, float* dx) {
  const int64_t row = blockIdx.x;
  const float* dyr = dy + row * dim;
  const float* xr = x + row * dim;
  double dot = 0.0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) dot += static_cast<double>(dyr[j]) * g[j] * xr[j];
  dot = block_reduce(dot, Sum{}, 0.0);
  const double rs = rstd[row];
  const double coef = rs * rs * rs * dot / static_cast<double>(dim);
  float* dxr = dx + row * dim;
  const float* resr = dx_residual ? dx_residual + row * dim : nullptr;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
    const float norm_dx = static_cast<float>(rs * g[j] * dyr[j] - coef * xr[j]);
    dxr[j] = resr ? norm_dx + resr[j] : norm_dx;
  }
}

// dg's term: dy·x·rstd of the row, in double as on the CPU.
struct DgTerm {
  const float *dy, *x, *rstd;
  int64_t dim;
  __device__ double operator()(int64_t row, int64_t j) const {
    return static_cast<double>(dy[row * dim + j]) * x[row * dim + j] * rstd[row];
  }
};

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& g, float eps, Tensor& y, Tensor& rstd) {
  check_on_cuda("rmsnorm_forward", x, g, y, rstd);
  const int64_t rows = x.rows(), dim = x.cols();
  checks::rmsnorm_forward(x, g, y, rstd);
  if (rows == 0) return;
  with_f32_or_bf16(y, "rmsnorm_forward y", [&](auto* out) {
    rmsnorm_forward_kernel<<<static_cast<unsigned>(rows), kThreads, 0, compute_stream()>>>(
        x.data<float>(), g.data<float>(), eps, dim, out, rstd.data<float>());
  });
  EG_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, Tensor& dx,
                      Tensor& dg, const Tensor& dx_residual) {
  check_on_cuda("rmsnorm_backward", dy, x, g, rstd, dx, dg, dx_residual);
  const int64_t rows = x.rows(), dim = x.cols();
  checks::rmsnorm_backward(dy, x, g, rstd, dx, dg, dx_residual);
  if (rows == 0) return;
  const float* residual = dx_residual.defined() ? dx_residual.data<float>() : nullptr;
  rmsnorm_dx_kernel<<<static_cast<unsigned>(rows), kThreads, 0, compute_stream()>>>(
      dy.data<float>(), x.data<float>(), g.data<float>(), rstd.data<float>(), dim, residual, dx.data<float>());
  EG_CUDA_CHECK_LAUNCH("rmsnorm_dx_kernel");
  add_column_sums(SumOfRowTerms<DgTerm>{{dy.data<float>(), x.data<float>(), rstd.data<float>(), dim}}, rows, dim,
                  dg.data<float>());
}

}  // namespace engram::kernels::cuda
