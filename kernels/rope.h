#pragma once
// Rotary position embedding, rotate-half convention (MODEL.md §2). The cos/sin tables are made
// on the host in double precision and rounded once, so every backend rotates by the same floats.
#include "kernels/dispatch.h"

namespace engram::kernels {

struct RopeTables {
  Tensor cos;  // [T, d_h/2]: cos(pos · θ^(−2i/d_h))
  Tensor sin;  // [T, d_h/2]
};
RopeTables make_rope_tables(int64_t seq_len, int64_t head_dim, double theta);

namespace cpu {
// x: [B, T, H, d_h] f32 rotated into out (x's shape, f32; may be x itself). inverse = rotate by
// −angle (the backward of the forward).
void rope_apply_to(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out);
// The same rotation written into columns [first_column, first_column + H·d_h) of out [B·T, W] (f32),
// each token's heads side by side: the attention's q and k gradients into the one matrix of q, k and v
// gradients that a single product takes (apart from x).
void rope_apply_into_columns(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out,
                             int64_t first_column);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/rope.cu, the contracts of cpu:: above; out may also be bf16 (rounded to
                  // nearest even once rotated), for rotated tensors that only products read
void rope_apply_to(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out);
void rope_apply_into_columns(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out,
                             int64_t first_column);
}  // namespace cuda
#endif
EG_KERNEL(rope_apply_to)
EG_KERNEL(rope_apply_into_columns)
}  // namespace engram::kernels
