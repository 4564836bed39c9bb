#pragma once
// Matrix products. Tensors are read as matrices [prod(shape[:-1]), shape[-1]] (row-major).
// CPU: OpenBLAS sgemm. Outputs follow C = alpha·op(A)·op(B) + beta·C (beta = 1 accumulates).
// A tensor that several products take (an activation used forward and for its weight gradient, a
// weight used forward and for the input gradient) goes through matmul_operand once: under
// MatmulPrecision::BF16 on CUDA that rounds it to bf16 once instead of once per product, and the
// bf16 copy is what the module keeps for backward.
#include <vector>

#include "kernels/dispatch.h"

namespace engram::kernels {
namespace cpu {
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
          float beta = 0.0f);
// d = op(a)·op(b) + c, c and d f32 of one shape (d is c or does not overlap it): a product whose
// output joins a sum it does not own, the blocks' residual stream, in one pass (on CUDA cuBLASLt
// reads c as its C and writes d: no output to read back for a separate add).
void gemm_plus(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, Tensor& d);
// gemm's contract as a true float32 product (a, b, c f32) whatever the matmul precision: what
// DESIGN.md decision 7 keeps in float32 (the MoE router). The CPU always multiplies so.
void gemm_float32(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
                  float beta = 0.0f);

// Grouped (per-expert) products over row blocks. offsets has G+1 entries, offsets[0] = 0,
// offsets[G] = rows of a; group g owns rows [offsets[g], offsets[g+1]). b is [G, r, s].
// c_g = a_g · op(b[g]) + beta·c_g with op = transpose when trans_b (empty groups skipped).
void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                  float beta = 0.0f);
// The sum of two grouped products over the same groups (a2, b2 shaped like a, b):
// c_g = a_g · op(b[g]) + a2_g · op(b2[g]). The MoE's row gradient through w1 and w3; on CUDA one pass
// over c instead of a second product that reads c back.
void grouped_gemm_pair(const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2, bool trans_b, Tensor& c,
                       const std::vector<int64_t>& offsets);
// Weight gradient: db[g] += dc_g^T · a_g, with dc [N, r], a [N, s], db [G, r, s] (accumulated).
void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets);
// x as the products take it: the CPU multiplies in float32, so x itself.
Tensor matmul_operand(const Tensor& x);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/gemm.cu, the contracts of cpu:: above
// a and b f32 or bf16 (one of each only under MatmulPrecision::BF16, which rounds the f32 one), c f32
// or bf16; float32 accumulation (cuBLASLt). Grouped products of bf16 operands with f32 output, or
// bf16 output and beta 0, run as one tensor-core kernel (kernels/cuda/grouped_mma.h), others as one
// cuBLASLt call per group.
void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
          float beta = 0.0f);
void gemm_plus(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, Tensor& d);
void gemm_float32(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha = 1.0f,
                  float beta = 0.0f);  // CUBLAS_COMPUTE_32F on f32 operands, never rounded
void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                  float beta = 0.0f);
void grouped_gemm_pair(const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2, bool trans_b, Tensor& c,
                       const std::vector<int64_t>& offsets);
void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets);
// Under MatmulPrecision::BF16 an f32 x rounded to a bf16 copy (nearest even); otherwise x itself.
Tensor matmul_operand(const Tensor& x);
}  // namespace cuda
#endif
EG_KERNEL(gemm)
EG_KERNEL(gemm_plus)
EG_KERNEL(gemm_float32)
EG_KERNEL(grouped_gemm)
EG_KERNEL(grouped_gemm_pair)
EG_KERNEL(grouped_gemm_wgrad)
EG_KERNEL(matmul_operand)
}  // namespace engram::kernels
