#pragma once
// MoE routing (MODEL.md §3): scores, biased top-k selection, normalized weights, and the
// optional auxiliary balance loss and router z-loss.
#include "kernels/dispatch.h"

namespace engram::kernels {

enum class ScoreFunc { Sigmoid, Softmax };

namespace cpu {
// logits, scores: [N, E]. scores written.
void router_scores(const Tensor& logits, ScoreFunc func, Tensor& scores);
// dlogits written from dscores through the score function.
void router_scores_backward(const Tensor& dscores, const Tensor& scores, ScoreFunc func, Tensor& dlogits);
// Selects the k experts with the largest scores + bias (bias [E]); ties go to the lower expert
// index; slots ordered by descending (score + bias), then ascending index. Weights use the
// unbiased scores: w = s_sel / Σ s_sel if normalize else s_sel, times routed_scale.
// topk_idx i32 [N, k], topk_w f32 [N, k], both written.
void topk_select(const Tensor& scores, const Tensor& bias, int k, bool normalize, float routed_scale,
                 Tensor& topk_idx, Tensor& topk_w);
// dscores += ∂(Σ d_topk_w · topk_w)/∂scores (accumulated; only selected experts receive gradient).
void topk_weights_backward(const Tensor& d_topk_w, const Tensor& scores, const Tensor& topk_idx, bool normalize,
                           float routed_scale, Tensor& dscores);
// Auxiliary balance loss over the N tokens of this micro-batch: returns Σ_i f_i·P_i with
// f_i = load_i / (N·k), P_i = mean_t s_ti / Σ_j s_tj. Adds grad_scale·∂/∂scores (through P
// only) into dscores. The caller multiplies by α·E (and passes grad_scale accordingly).
double moe_aux_loss(const Tensor& scores, const Tensor& topk_idx, float grad_scale, Tensor& dscores);
// Router z-loss: returns Σ_t logsumexp(logits_t)² and adds grad_scale·∂/∂logits into dlogits.
double router_z_loss(const Tensor& logits, float grad_scale, Tensor& dlogits);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
// kernels/cuda/router.cu, the contracts of cpu:: above, except that an expert id outside [0, E) in
// topk_weights_backward's topk_idx is raised at the host's next wait for the device (moe_aux_loss
// waits, so it raises its own): kernels/cuda/deferred_errors.h. Nothing is written on a bad id.
namespace cuda {
void router_scores(const Tensor& logits, ScoreFunc func, Tensor& scores);
void router_scores_backward(const Tensor& dscores, const Tensor& scores, ScoreFunc func, Tensor& dlogits);
void topk_select(const Tensor& scores, const Tensor& bias, int k, bool normalize, float routed_scale,
                 Tensor& topk_idx, Tensor& topk_w);
void topk_weights_backward(const Tensor& d_topk_w, const Tensor& scores, const Tensor& topk_idx, bool normalize,
                           float routed_scale, Tensor& dscores);
double moe_aux_loss(const Tensor& scores, const Tensor& topk_idx, float grad_scale, Tensor& dscores);
double router_z_loss(const Tensor& logits, float grad_scale, Tensor& dlogits);
}  // namespace cuda
#endif
EG_KERNEL(router_scores)
EG_KERNEL(router_scores_backward)
EG_KERNEL(topk_select)
EG_KERNEL(topk_weights_backward)
EG_KERNEL(moe_aux_loss)
EG_KERNEL(router_z_loss)
}  // namespace engram::kernels
