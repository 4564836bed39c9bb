// Adam updates on the GPU, the CUDA side of kernels/adam.h: every element runs adam_element, the
// same code as the CPU, compiled without fused multiply-adds (kernels/CMakeLists.txt), so the four-
// and one-element kernels give the same bits.
#include <cstdint>

#include "kernels/adam.h"
#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

__global__ void adamw_kernel(float* p, const float* grad, float* m, float* v, int64_t n, AdamCoeffs c) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    adam_element(p[i], grad[i], m[i], v[i], c);
}

// The same four elements at a time (n4 vectors of 16-byte aligned tensors): a quarter of the loads
// and stores in flight as many bytes, for a kernel that only streams memory.
__global__ void adamw_vector_kernel(float4* p, const float4* grad, float4* m, float4* v, int64_t n4, AdamCoeffs c) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n4; i += int64_t{gridDim.x} * blockDim.x) {
    float4 pi = p[i], mi = m[i], vi = v[i];
    const float4 gi = grad[i];
    adam_element(pi.x, gi.x, mi.x, vi.x, c);
    adam_element(pi.y, gi.y, mi.y, vi.y, c);
    adam_element(pi.z, gi.z, mi.z, vi.z, c);
    adam_element(pi.w, gi.w, mi.w, vi.w, c);
    p[i] = pi, m[i] = mi, v[i] = vi;
  }
}

// Element e of row_grads [U, C] updates table row rows[e / C]. Rows are validated first (in range,
// strictly ascending, so no two threads touch one element).
__global__ void sparse_adam_kernel(float* p, const int64_t* rows, const float* g, float* m, float* v, int64_t c,
                                   int64_t n, AdamCoeffs coeffs) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n; e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t at = rows[e / c] * c + e % c;
    adam_element(p[at], g[e], m[at], v[at], coeffs);
  }
}

__global__ void check_rows_kernel(const int64_t* rows, int64_t u, int64_t n_rows, unsigned long long* bad) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < u; i += int64_t{gridDim.x} * blockDim.x)
    if (rows[i] < 0 || rows[i] >= n_rows || (i > 0 && rows[i] <= rows[i - 1])) report_bad_position(bad, i);
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamStep& s) {
  check_on_cuda("adamw_update", param, grad, m, v);
  checks::adamw(param, grad, m, v);
  const AdamCoeffs coeffs = adam_coeffs(s);
  const int64_t n = param.numel();
  if (n == 0) return;
  if (four_at_a_time(n, param, grad, m, v)) {
    adamw_vector_kernel<<<grid_for(n / 4), kThreads, 0, compute_stream()>>>(
        static_cast<float4*>(param.raw()), static_cast<const float4*>(grad.raw()), static_cast<float4*>(m.raw()),
        static_cast<float4*>(v.raw()), n / 4, coeffs);
  } else {
    adamw_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(param.data<float>(), grad.data<float>(),
                                                                 m.data<float>(), v.data<float>(), n, coeffs);
  }
  EG_CUDA_CHECK_LAUNCH("adamw_kernel");
}

void sparse_adam_update(Tensor& table, const Tensor& rows, const Tensor& row_grads, Tensor& m, Tensor& v,
                        const AdamStep& s) {
  check_on_cuda("sparse_adam_update", table, rows, row_grads, m, v);
  checks::sparse_adam(table, rows, row_grads, m, v);
  const int64_t n_rows = table.dim(0), c = table.dim(1), u = rows.numel();
  const AdamCoeffs coeffs = adam_coeffs(s);
  if (u == 0 || c == 0) return;
  // The invariant costs one wait for the device; a wrong row would silently corrupt the table.
  FirstBadPosition bad_row;
  check_rows_kernel<<<grid_for(u), kThreads, 0, compute_stream()>>>(rows.data<int64_t>(), u, n_rows, bad_row.slot());
  EG_CUDA_CHECK_LAUNCH("check_rows_kernel");
  const int64_t i = bad_row.position();
  EG_ASSERT(i < 0, "sparse_adam_update: row ", integer_at(rows, i), " at ", i,
            " is outside [0, ", n_rows, ") or not above the row before it");
  sparse_adam_kernel<<<grid_for(u * c), kThreads, 0, compute_stream()>>>(
      table.data<float>(), rows.data<int64_t>(), row_grads.data<float>(), m.data<float>(), v.data<float>(), c, u * c,
      coeffs);
  EG_CUDA_CHECK_LAUNCH("sparse_adam_kernel");
}

}  // namespace engram::kernels::cuda
