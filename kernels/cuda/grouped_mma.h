#pragma once
// Grouped expert products in one launch (internal to kernels/cuda/): every group's tiles of a
// grouped product run as blocks of one tensor-core kernel (grouped_mma.cu), instead of one
// cuBLASLt call per group. Taken for bf16 operands with float32 output, which is what the MoE layers
// multiply under MatmulPrecision::BF16; the functions return false for anything else (f32 operands,
// a bf16 output, more than kGroupedMmaMaxGroups groups, rows not a multiple of 8 elements, operands
// or output not 16-byte aligned), and the caller runs its per-group products instead.
#include <vector>

#include "runtime/tensor.h"

namespace engram::kernels::cuda {

constexpr int kGroupedMmaMaxGroups = 256;  // the group table travels in the kernel's parameters

// c_g = a_g · op(b[g]) + beta·c_g (kernels::grouped_gemm's contract).
bool grouped_mma(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                 float beta);
// db[g] += dc_gᵀ · a_g (kernels::grouped_gemm_wgrad's contract).
bool grouped_mma_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets);

}  // namespace engram::kernels::cuda
