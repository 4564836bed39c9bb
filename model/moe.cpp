#include "model/moe.h"

#include <cmath>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "kernels/permute.h"
#include "kernels/router.h"
#include "kernels/swiglu.h"
#include "parallel/moe_dispatcher.h"
#include "parallel/process_groups.h"

namespace engram {

namespace {

std::string moe_name(int layer, const std::string& leaf) {
  return "layers." + std::to_string(layer) + ".moe." + leaf;
}

kernels::ScoreFunc score_func(const config::MoeConfig& moe) {
  return moe.score_func() == config::SOFTMAX ? kernels::ScoreFunc::Softmax : kernels::ScoreFunc::Sigmoid;
}

// Output projections are scaled down with depth (MODEL.md §5).
double output_std(const ModelConfig& cfg) { return cfg.init_std() / std::sqrt(2.0 * cfg.n_layers()); }

// One stacked expert tensor [E, ...]: whole, or this rank's expert block when groups are given
// (init is sharding-invariant, so every layout starts from the same weights).
Parameter& add_experts(ParameterRegistry& params, const std::string& name, const Shape& shape, double std,
                       const ProcessGroups* groups) {
  const InitSpec init{InitKind::Normal, std};
  if (!groups) return params.add(name, shape, OptimGroup::Decay, init);
  EG_ASSERT(groups->layout().n_experts == shape[0], "process groups built for ", groups->layout().n_experts,
            " experts, ", name, " has ", shape[0]);
  const IndexRange local = groups->layout().local_experts();
  return params.add(name, shape, OptimGroup::Decay, init, ShardKind::Experts, local.begin, local.size());
}

}  // namespace

struct MoELayer::ExpertSaved {
  // As the products take them (kernels::matmul_operand: bf16 under BF16 on CUDA, rounded once per
  // forward).
  Tensor rows;            // [A, D]: input row of each assignment, grouped by (held) expert
  Tensor act;             // [A, F_e], written by the SwiGLU in that dtype
  Tensor w1, w3, w2;      // the held experts' weights
  Tensor gate, up;        // [A, F_e], the products' outputs, in act's dtype
};

struct MoELayer::Saved {
  Tensor x;                    // [N, D] f32: the router multiplies in float32 (DESIGN.md decision 7)
  Tensor logits, scores;       // [N, E]
  Tensor topk_idx, topk_w;     // [N, K]
  kernels::ExpertSort sort;    // single process only (the dispatcher keeps its own plan)
  ExpertSaved experts;
  Tensor expert_out;           // [N·K, D], single process only
  Tensor aux_dscores;          // [N, E] weighted aux-loss gradient (undefined when α = 0)
  Tensor z_dlogits;            // [N, E] weighted z-loss gradient (undefined when β = 0)
};

MoELayer::MoELayer(const ModelConfig& cfg, int layer, ParameterRegistry& params, ProcessGroups* groups)
    : cfg_(cfg),
      router_(params.add(moe_name(layer, "router.weight"), {cfg.moe().n_routed_experts(), cfg.d_model()},
                         OptimGroup::Decay, {InitKind::Normal, cfg.init_std()})),
      bias_(params.add(moe_name(layer, "router.bias"), {cfg.moe().n_routed_experts()}, OptimGroup::NotTrained,
                       {InitKind::Zeros})),
      w1_(add_experts(params, moe_name(layer, "experts.w1"),
                      {cfg.moe().n_routed_experts(), cfg.moe().expert_d_ff(), cfg.d_model()}, cfg.init_std(),
                      groups)),
      w3_(add_experts(params, moe_name(layer, "experts.w3"),
                      {cfg.moe().n_routed_experts(), cfg.moe().expert_d_ff(), cfg.d_model()}, cfg.init_std(),
                      groups)),
      w2_(add_experts(params, moe_name(layer, "experts.w2"),
                      {cfg.moe().n_routed_experts(), cfg.d_model(), cfg.moe().expert_d_ff()},
                      output_std(cfg), groups)) {
  const int shared = cfg.moe().n_shared_experts();
  if (shared > 0)
    shared_ = std::make_unique<SwiGluMlp>(params, moe_name(layer, "shared"), cfg.d_model(),
                                          int64_t{shared} * cfg.moe().expert_d_ff(), cfg.init_std(),
                                          output_std(cfg));
  if (groups)
    dispatcher_ = std::make_unique<ExpertDispatcher>(groups->expert_parallel(), cfg.moe().n_routed_experts());
}

MoELayer::~MoELayer() = default;

Tensor MoELayer::experts_forward(const Tensor& rows, const std::vector<int64_t>& offsets,
                                 ExpertSaved& saved) {
  const int64_t n_rows = rows.rows(), d = cfg_.d_model(), d_ff = cfg_.moe().expert_d_ff();
  const Device dev = rows.device();
  saved.rows = kernels::matmul_operand(rows);
  saved.w1 = kernels::matmul_operand(w1_.value);
  saved.w3 = kernels::matmul_operand(w3_.value);
  saved.w2 = kernels::matmul_operand(w2_.value);
  // Outputs that only elementwise kernels read (which compute in f32) are written in bf16 under bf16
  // matmuls, as autocast does: half the traffic. gate and up feed the SwiGLU, which writes act in the
  // dtype the w2 product takes; out feeds the combine (under a dispatcher, after travelling home in
  // that dtype: half the bytes).
  const DType hidden = kernels::matmul_operand_dtype(dev);
  saved.gate = Tensor::empty({n_rows, d_ff}, hidden, dev);
  saved.up = Tensor::empty({n_rows, d_ff}, hidden, dev);
  saved.act = Tensor::empty({n_rows, d_ff}, hidden, dev);
  Tensor out = Tensor::empty({n_rows, d}, hidden, dev);
  kernels::grouped_gemm(saved.rows, saved.w1, true, saved.gate, offsets);
  kernels::grouped_gemm(saved.rows, saved.w3, true, saved.up, offsets);
  kernels::swiglu_forward(saved.gate, saved.up, saved.act);
  kernels::grouped_gemm(saved.act, saved.w2, true, out, offsets);
  return out;
}

Tensor MoELayer::experts_backward(const Tensor& d_out_in, const std::vector<int64_t>& offsets,
                                  const ExpertSaved& saved) {
  const Device dev = d_out_in.device();
  const Tensor d_out = kernels::matmul_operand(d_out_in);
  Tensor dact = Tensor::empty(saved.gate.shape(), saved.act.dtype(), dev);  // read by the SwiGLU only
  kernels::grouped_gemm(d_out, saved.w2, false, dact, offsets);
  kernels::grouped_gemm_wgrad(d_out, saved.act, w2_.grad, offsets);
  Tensor dgate = Tensor::empty(saved.gate.shape(), saved.act.dtype(), dev);
  Tensor dup = Tensor::empty(saved.up.shape(), saved.act.dtype(), dev);
  kernels::swiglu_backward(dact, saved.gate, saved.up, dgate, dup);
  kernels::grouped_gemm_wgrad(dgate, saved.rows, w1_.grad, offsets);
  kernels::grouped_gemm_wgrad(dup, saved.rows, w3_.grad, offsets);
  // Read by the combine that sums each token's rows in f32 (or the dispatcher's sums per received row).
  Tensor d_rows = Tensor::empty(saved.rows.shape(), saved.act.dtype(), dev);
  kernels::grouped_gemm_pair(dgate, saved.w1, dup, saved.w3, false, d_rows, offsets);
  return d_rows;
}

Tensor MoELayer::forward(const Tensor& x_in, const LossWeights& weights, const Tensor& residual) {
  const auto& moe = cfg_.moe();
  const int64_t n = x_in.rows(), d = cfg_.d_model(), n_experts = moe.n_routed_experts(), k = moe.top_k();
  const Device dev = x_in.device();
  EG_ASSERT(x_in.cols() == d, "MoE forward: x ", x_in.describe(), " must have d_model = ", d, " columns");
  auto s = std::make_shared<Saved>();
  const Tensor x = x_in.view({n, d});
  EG_ASSERT(x.dtype() == DType::F32, "MoE forward: x ", x.describe(), " must be f32 (the router's input)");
  if (residual.defined()) check_shape(residual, x_in.shape(), "MoE forward residual");
  s->x = x;
  // The shared experts take x rounded (kernels::matmul_operand) and keep that copy for backward; the
  // expert gather reads it where there is one (half the bytes), else rounds x's rows as it copies them.
  // A dispatcher sends the rounded rows (half the bytes of f32 ones).
  const Tensor x_operand = shared_ || dispatcher_ ? kernels::matmul_operand(x) : x;

  // Routing.
  s->logits = Tensor::empty({n, n_experts}, DType::F32, dev);
  s->scores = Tensor::empty({n, n_experts}, DType::F32, dev);
  s->topk_idx = Tensor::empty({n, k}, DType::I32, dev);
  s->topk_w = Tensor::empty({n, k}, DType::F32, dev);
  kernels::gemm_float32(s->x, false, router_.value, true, s->logits);
  kernels::router_scores(s->logits, score_func(moe), s->scores);
  kernels::topk_select(s->scores, bias_.value, static_cast<int>(k), moe.normalize_topk(), moe.routed_scale(),
                       s->topk_idx, s->topk_w);
  // Loads: this rank's assignments per global expert (the trainer sums them over ranks).
  load_.assign(n_experts, 0);
  // The output starts as the shared experts' (written onto the residual when there is one) or as a
  // copy of the residual (the block keeps the residual for its norm's backward; the combine adds in
  // place); the routed experts' sum is added onto it. Neither: the routed sum is the output.
  const Tensor residual_rows = residual.defined() ? residual.view({n, d}) : Tensor();
  Tensor y_flat = shared_              ? shared_->forward(x_operand, residual_rows)
                  : residual.defined() ? residual_rows.clone()
                                       : Tensor();
  const bool onto_base = y_flat.defined();
  if (dispatcher_) {
    for (int32_t e : s->topk_idx.to_vector<int32_t>()) ++load_[e];  // host buffers (MPI)
    // Tokens travel to the ranks holding their experts; the held experts run on what arrives, and
    // the dispatcher's combine adds their sum onto the output begun above (or makes it).
    y_flat = dispatcher_->forward(
        x_operand, s->topk_idx, s->topk_w,
        [&](const Tensor& rows, const std::vector<int64_t>& offsets) {
          return experts_forward(rows, offsets, s->experts);
        },
        y_flat);
  } else {
    // Routed experts on the assignments grouped by expert (empty groups are skipped by the kernels).
    s->sort = kernels::sort_by_expert(s->topk_idx, static_cast<int>(n_experts));
    for (int64_t e = 0; e < n_experts; ++e) load_[e] = s->sort.offsets[e + 1] - s->sort.offsets[e];
    // Gathered straight into the dtype the expert products take (no f32 copy to round).
    Tensor x_sorted = Tensor::empty({n * k, d}, kernels::matmul_operand_dtype(dev), dev);
    kernels::embedding_gather(x_operand, s->sort.sorted_token, x_sorted);
    s->expert_out = experts_forward(x_sorted, s->sort.offsets, s->experts);
    if (!onto_base) y_flat = Tensor::empty({n, d}, DType::F32, dev);
    kernels::combine_expert_outputs(s->expert_out, s->sort.position, s->topk_w, y_flat, onto_base);
  }

  // Auxiliary terms: their gradients do not depend on dy, so they are computed here and added in backward.
  aux_loss_ = 0.0;
  if (moe.aux_loss_coeff() > 0) {
    const float scale = moe.aux_loss_coeff() * static_cast<float>(n_experts) * weights.per_micro_batch;
    s->aux_dscores = Tensor::zeros({n, n_experts}, DType::F32, dev);
    aux_loss_ = scale * kernels::moe_aux_loss(s->scores, s->topk_idx, scale, s->aux_dscores);
  }
  z_loss_ = 0.0;
  if (moe.z_loss_coeff() > 0) {
    const float scale = moe.z_loss_coeff() * weights.per_token;
    s->z_dlogits = Tensor::zeros({n, n_experts}, DType::F32, dev);
    z_loss_ = scale * kernels::router_z_loss(s->logits, scale, s->z_dlogits);
  }
  saved_ = std::move(s);
  return y_flat.view(x_in.shape());
}

const Tensor& MoELayer::last_scores() const {
  EG_ASSERT(saved_ != nullptr, "MoELayer::last_scores before any forward");
  return saved_->scores;
}

Tensor MoELayer::backward(const Tensor& dy_in) {
  EG_ASSERT(saved_ != nullptr, "MoELayer::backward without forward");
  const Saved& s = *saved_;
  const auto& moe = cfg_.moe();
  const int64_t n = s.x.rows(), d = s.x.cols(), n_experts = moe.n_routed_experts();
  const Device dev = dy_in.device();
  const Tensor dy = dy_in.view({n, d});

  Tensor dx_flat;  // [N, D] f32: each part below adds onto the ones before it
  Tensor d_topk_w;
  const auto experts_bwd = [&](const Tensor& d_out, const std::vector<int64_t>& offsets) {
    return experts_backward(d_out, offsets, s.experts);
  };
  if (dispatcher_) {
    ExpertDispatcher::Grads grads = dispatcher_->backward(dy, experts_bwd);
    dx_flat = grads.dx.view({n, d});  // the dispatcher's own new tensor: the sum starts there
    d_topk_w = std::move(grads.d_topk_w);
    if (shared_) shared_->backward_add_to(dy, dx_flat);
  } else {
    // Combine: gradients of the expert outputs and of the routing weights; experts in reverse.
    // Written straight in the dtype the expert products take (no f32 copy to round).
    Tensor d_expert_out = Tensor::empty(s.expert_out.shape(), kernels::matmul_operand_dtype(dev), dev);
    d_topk_w = Tensor::empty(s.topk_w.shape(), DType::F32, dev);
    kernels::combine_expert_outputs_backward(dy, s.expert_out, s.sort.position, s.topk_w, d_expert_out,
                                             d_topk_w);
    const Tensor d_rows = experts_bwd(d_expert_out, s.sort.offsets);
    // Each token's rows summed back in slot order (the combine with unit weights: the sort's positions
    // say where they are, so nothing is sorted again), onto the shared experts' input gradient, which
    // their input products wrote (nothing is zeroed).
    dx_flat = shared_ ? shared_->backward(dy) : Tensor::empty({n, d}, DType::F32, dev);
    kernels::combine_expert_outputs(d_rows, s.sort.position, Tensor(), dx_flat, /*accumulate=*/shared_ != nullptr);
  }

  // Router: through the selected weights (the selection itself has no gradient), plus the aux terms.
  Tensor dscores = s.aux_dscores.defined() ? s.aux_dscores.clone()
                                           : Tensor::zeros({n, n_experts}, DType::F32, dev);
  kernels::topk_weights_backward(d_topk_w, s.scores, s.topk_idx, moe.normalize_topk(), moe.routed_scale(),
                                 dscores);
  Tensor dlogits = Tensor::empty({n, n_experts}, DType::F32, dev);
  kernels::router_scores_backward(dscores, s.scores, score_func(moe), dlogits);
  if (s.z_dlogits.defined()) kernels::add_(dlogits, s.z_dlogits);
  kernels::gemm_float32(dlogits, true, s.x, false, router_.grad, 1.0f, 1.0f);
  kernels::gemm_float32(dlogits, false, router_.value, false, dx_flat, 1.0f, 1.0f);
  return dx_flat.view(dy_in.shape());
}

}  // namespace engram
