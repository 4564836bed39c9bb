#pragma once
// Matrix products. Tensors are read as matrices [prod(shape[:-1]), shape[-1]] (row-major).
// CPU: OpenBLAS sgemm. Outputs follow C = alpha·op(A)·op(B) + beta·C (beta = 1 accumulates).
#include <vector>

#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
          float beta = 0.0f);

// Grouped (per-expert) products over row blocks. offsets has G+1 entries, offsets[0] = 0,
// offsets[G] = rows of a; group g owns rows [offsets[g], offsets[g+1]). b is [G, r, s].
// c_g = a_g · op(b[g]) with op = transpose when trans_b (c written; empty groups skipped).
void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets);
// Weight gradient: db[g] += dc_g^T · a_g, with dc [N, r], a [N, s], db [G, r, s] (accumulated).
void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/gemm.cu, the contracts of cpu:: above
// a and b both f32 or both bf16, c f32 or bf16; float32 accumulation (cuBLASLt).
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
          float beta = 0.0f);
void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets);
void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets);
}  // namespace cuda
#endif
EG_KERNEL(gemm)
EG_KERNEL(grouped_gemm)
EG_KERNEL(grouped_gemm_wgrad)
}  // namespace engram::kernels
