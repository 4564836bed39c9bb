#pragma once
// Grouped expert products in one launch (internal to kernels/cuda/): every group's tiles of a
// grouped product run as blocks of one tensor-core kernel, instead of one cuBLASLt call per group:
// on an H100 (compute capability 9.0, in a build for sm_90a) the Hopper kernel (grouped_wgmma.cu,
// wgmma), elsewhere the one with mma.sync (grouped_mma.cu, sm_80 and newer). Taken for bf16
// operands, which is what the MoE layers multiply under MatmulPrecision::BF16, with a float32 output,
// or a bf16 one for products and pairs with beta 0 (each float32 sum rounded to nearest even: the
// float32 output's values, rounded). The functions return false for anything else (f32 operands, a
// bf16 output with beta ≠ 0 or of weight gradients, more than kGroupedMmaMaxGroups groups, rows not a
// multiple of 8 elements, operands or output not 16-byte aligned), and the caller runs its per-group
// products instead.
#include <vector>

#include "runtime/tensor.h"

namespace engram::kernels::cuda {

constexpr int kGroupedMmaMaxGroups = 256;  // the group table travels in the kernel's parameters

// Which kernel runs: the fastest this device and build have, or mma.sync on any (tests compare both).
enum class GroupedMmaKernel { Fastest, MmaSync };

// Whether Fastest is the Hopper kernel here: a compute capability 9.0 device and sm_90a code built.
bool grouped_wgmma_available();

// c_g = a_g · op(b[g]) + beta·c_g (kernels::grouped_gemm's contract); c float32, or bf16 with beta 0.
bool grouped_mma(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                 float beta, GroupedMmaKernel kernel = GroupedMmaKernel::Fastest);
// c_g = a_g · op(b[g]) + a2_g · op(b2[g]) (kernels::grouped_gemm_pair's contract): one product over
// k twice as long, the second half of its k tiles read from a2 and b2; c float32 or bf16.
bool grouped_mma_pair(const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2, bool trans_b, Tensor& c,
                      const std::vector<int64_t>& offsets, GroupedMmaKernel kernel = GroupedMmaKernel::Fastest);
// db[g] += dc_gᵀ · a_g (kernels::grouped_gemm_wgrad's contract); db float32 only.
bool grouped_mma_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets,
                       GroupedMmaKernel kernel = GroupedMmaKernel::Fastest);

}  // namespace engram::kernels::cuda
