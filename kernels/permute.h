#pragma once
// Token permutation for experts. An assignment is a (token t, slot k) pair, flat index a = t·K + k.
// Sorting assignments by (expert, t, k) gives contiguous per-expert row blocks; the rows are
// gathered with embedding_gather(x, sorted_token) and scattered back with the kernels below.
#include <vector>

#include "kernels/dispatch.h"

namespace engram::kernels {

struct ExpertSort {
  Tensor sorted_token;           // i32 [N·K]: token of the assignment at each sorted position
  Tensor position;               // i32 [N·K]: sorted position of each flat assignment a = t·K + k
  std::vector<int64_t> offsets;  // E + 1 (host): expert e owns sorted rows [offsets[e], offsets[e+1])
};

namespace cpu {
ExpertSort sort_by_expert(const Tensor& topk_idx, int n_experts);  // topk_idx i32 [N, K]
// y[t] = Σ_k topk_w[t,k] · expert_out[position[t·K+k]], summed in k order (K = position's size / N).
// y [N, D] written, or with accumulate added to what y holds (its value first, then the terms in k
// order: the MoE adds its routed experts onto the residual stream plus the shared experts). topk_w
// undefined: unit weights, each token's rows summed (the MoE's input gradient from its experts' row
// gradients: the sorted rows scattered back without sorting their tokens again).
void combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, Tensor& y,
                            bool accumulate = false);
// d_expert_out[position[a]] = w[a]·dy[t]; d_topk_w[t,k] = <dy[t], expert_out[position[a]]>. Both written.
void combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                     const Tensor& topk_w, Tensor& d_expert_out, Tensor& d_topk_w);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
// kernels/cuda/permute.cu, the contracts of cpu:: above (offsets still on the host), except that the
// combines raise a position outside [0, N·K) at the host's next wait for the device
// (kernels/cuda/deferred_errors.h); they write nothing then. d_expert_out may also be bf16 (rounded to
// nearest even: the dtype of kernels::matmul_operand_dtype, which the expert products take), and so
// may expert_out (as the products wrote it), read as the floats it holds.
namespace cuda {
ExpertSort sort_by_expert(const Tensor& topk_idx, int n_experts);
void combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, Tensor& y,
                            bool accumulate = false);
void combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                     const Tensor& topk_w, Tensor& d_expert_out, Tensor& d_topk_w);
}  // namespace cuda
#endif
EG_KERNEL(sort_by_expert)
EG_KERNEL(combine_expert_outputs)
EG_KERNEL(combine_expert_outputs_backward)
}  // namespace engram::kernels
