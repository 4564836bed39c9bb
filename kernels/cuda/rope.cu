// Rotary position embedding on the GPU, the CUDA side of kernels/rope.h: one thread per rotated
// pair (lo[i], hi[i]) of a head, with the host-made cos/sin tables (device copies).
#include "kernels/cuda/common.cuh"
#include "kernels/rope.h"

namespace engram::kernels::cuda {

namespace {

// n = B·T·H·half pairs; pair p is (row = p / half, i = p % half) with row = (b·T + t)·H + h.
__global__ void rope_kernel(float* x, const float* cos, const float* sin, int64_t seq, int64_t heads, int64_t half,
                            float sign, int64_t n) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n; p += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = p / half, i = p % half;
    const int64_t t = (row / heads) % seq;
    float* lo = x + row * 2 * half;
    float* hi = lo + half;
    const float c = cos[t * half + i], sn = sign * sin[t * half + i];
    const float a = lo[i], z = hi[i];
    lo[i] = a * c - z * sn;
    hi[i] = a * sn + z * c;
  }
}

}  // namespace

void rope_apply(Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse) {
  check_on_cuda("rope_apply", x, cos, sin);
  EG_ASSERT(x.ndim() == 4, "rope_apply: x must be [B, T, H, d_h], got ", shape_str(x.shape()));
  const int64_t seq = x.dim(1), heads = x.dim(2), head_dim = x.dim(3), half = head_dim / 2;
  EG_ASSERT(head_dim % 2 == 0, "rope_apply: odd head_dim in ", shape_str(x.shape()));
  EG_ASSERT(cos.ndim() == 2 && cos.dim(0) >= seq && cos.dim(1) == half && sin.shape() == cos.shape(),
            "rope_apply: tables cos ", shape_str(cos.shape()), ", sin ", shape_str(sin.shape()), " for x ",
            shape_str(x.shape()));
  const int64_t n = x.numel() / 2;
  if (n == 0) return;
  rope_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(x.data<float>(), cos.data<float>(), sin.data<float>(),
                                                               seq, heads, half, inverse ? -1.0f : 1.0f, n);
  EG_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace engram::kernels::cuda
