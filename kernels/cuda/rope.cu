// Rotary position embedding on the GPU, the CUDA side of kernels/rope.h: one thread per four adjacent
// rotated pairs (lo[i..i+3], hi[i..i+3]) of a head where the tensors allow, else per pair, with the
// host-made cos/sin tables (device copies), into x's layout or into columns of wider rows. The output may be x itself,
// or bf16 (kernels::attention_operand_dtype: the attention's q and k, which only its products read), rounded to nearest
// even once rotated.
#include <cstdint>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/rope.h"

namespace engram::kernels::cuda {

namespace {

// groups = B·T·H·half / kVec; group g is (row = g / (half / kVec), i = kVec·(g % (half / kVec))) with
// row = token·H + h, token = b·T + t. x's pair is row·2·half + i (+ half); out's is token·width +
// first_column + h·2·half + i (+ half): x's own layout when width = H·2·half and first_column = 0.
// Index is 32-bit whenever the groups allow: the divisions are per group, and 64-bit ones cost tens
// of instructions each (they bounded the one-pair-a-thread kernel). Each thread reads its pairs
// before writing them, so out may be x.
template <int kVec, class Index, class Out>
__global__ void rope_kernel(const float* x, const float* cos, const float* sin, Index seq, Index heads, Index half,
                            float sign, Index groups, int64_t width, int64_t first_column, Out* out) {
  const Index per_row = half / kVec;
  for (Index g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
    const Index row = g / per_row, i = (g - row * per_row) * kVec;
    const Index token = row / heads, h = row - token * heads;
    const int64_t table = int64_t{token % seq} * half + i;
    const int64_t lo = int64_t{row} * 2 * half + i, hi = lo + half;
    const int64_t out_lo = int64_t{token} * width + first_column + int64_t{h} * 2 * half + i;
    const Floats<kVec> c = load_floats<kVec>(cos + table), s = load_floats<kVec>(sin + table);
    const Floats<kVec> a = load_floats<kVec>(x + lo), z = load_floats<kVec>(x + hi);
    Floats<kVec> rotated_lo, rotated_hi;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      // Rounded products, no fused multiply-adds: the CPU's arithmetic, and the same in every instance
      // (the f32 and bf16 outputs differ by the rounding only).
      const float sn = sign * s.v[k];
      rotated_lo.v[k] = __fsub_rn(__fmul_rn(a.v[k], c.v[k]), __fmul_rn(z.v[k], sn));
      rotated_hi.v[k] = __fadd_rn(__fmul_rn(a.v[k], sn), __fmul_rn(z.v[k], c.v[k]));
    }
    store_floats<kVec>(out + out_lo, rotated_lo);
    store_floats<kVec>(out + out_lo + half, rotated_hi);
  }
}

template <int kVec, class Out>
void launch_rope(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t half, float sign, int64_t width,
                 int64_t first_column, Out* out) {
  const int64_t groups = x.numel() / 2 / kVec;
  const auto launch = [&](auto index) {
    using Index = decltype(index);
    rope_kernel<kVec, Index, Out><<<grid_for(groups), kThreads, 0, compute_stream()>>>(
        x.data<float>(), cos.data<float>(), sin.data<float>(), static_cast<Index>(x.dim(1)),
        static_cast<Index>(x.dim(2)), static_cast<Index>(half), sign, static_cast<Index>(groups), width, first_column,
        out);
  };
  // 32 bits while g + the grid's stride stays below 2^32.
  if (groups < (int64_t{1} << 31)) {
    launch(uint32_t{});
  } else {
    launch(int64_t{});
  }
}

// Rotates x into rows of `width` values of out from first_column, four pairs a thread where every
// access allows it (half, width and first_column multiples of four; aligned tensors).
void rotate(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, int64_t half, Tensor& out,
            int64_t width, int64_t first_column) {
  if (x.numel() == 0) return;
  const float sign = inverse ? -1.0f : 1.0f;
  const bool vectors = width % 4 == 0 && first_column % 4 == 0 && four_at_a_time(half, x, cos, sin, out);
  with_f32_or_bf16(out, "rope_apply out", [&](auto* o) {
    if (vectors) {
      launch_rope<4>(x, cos, sin, half, sign, width, first_column, o);
    } else {
      launch_rope<1>(x, cos, sin, half, sign, width, first_column, o);
    }
  });
  EG_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace

void rope_apply_to(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out) {
  check_on_cuda("rope_apply", x, cos, sin, out);
  const int64_t half = checks::rope_apply(x, cos, sin, out, f32_or_bf16(out));
  rotate(x, cos, sin, inverse, half, out, x.dim(2) * x.dim(3), 0);
}

void rope_apply_into_columns(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out,
                             int64_t first_column) {
  check_on_cuda("rope_apply_into_columns", x, cos, sin, out);
  const int64_t half = checks::rope_apply_into_columns(x, cos, sin, out, first_column, f32_or_bf16(out));
  rotate(x, cos, sin, inverse, half, out, out.dim(1), first_column);
}

}  // namespace engram::kernels::cuda
