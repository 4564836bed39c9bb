// Rotary position embedding on the GPU, the CUDA side of kernels/rope.h: one thread per rotated
// pair (lo[i], hi[i]) of a head, with the host-made cos/sin tables (device copies). The output may be
// x itself, or bf16 (kernels::attention_operand_dtype: the attention's q and k, which only its
// products read), rounded to nearest even once rotated.
#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/rope.h"

namespace engram::kernels::cuda {

namespace {

// n = B·T·H·half pairs; pair p is (row = p / half, i = p % half) with row = (b·T + t)·H + h. Each
// thread reads its pair before writing it, so out may be x.
template <class Out>
__global__ void rope_kernel(const float* x, const float* cos, const float* sin, int64_t seq, int64_t heads,
                            int64_t half, float sign, int64_t n, Out* out) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < n; p += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = p / half, i = p % half;
    const int64_t t = (row / heads) % seq;
    const int64_t lo = row * 2 * half + i, hi = lo + half;
    const float c = cos[t * half + i], sn = sign * sin[t * half + i];
    const float a = x[lo], z = x[hi];
    out[lo] = static_cast<Out>(a * c - z * sn);
    out[hi] = static_cast<Out>(a * sn + z * c);
  }
}

}  // namespace

void rope_apply_to(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out) {
  check_on_cuda("rope_apply", x, cos, sin, out);
  const int64_t half = checks::rope_apply(x, cos, sin, out, f32_or_bf16(out));
  const int64_t n = x.numel() / 2;
  if (n == 0) return;
  with_f32_or_bf16(out, "rope_apply out", [&](auto* o) {
    rope_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(x.data<float>(), cos.data<float>(), sin.data<float>(),
                                                                x.dim(1), x.dim(2), half, inverse ? -1.0f : 1.0f, n, o);
  });
  EG_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace engram::kernels::cuda
