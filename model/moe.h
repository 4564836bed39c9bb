#pragma once
// MoE feed-forward layer (MODEL.md §3): router, biased top-k, routed experts (stacked SwiGLU),
// shared experts, optional aux loss and z-loss. Given process groups, the layer holds only its
// expert-parallel rank's block of experts and sends tokens to them through an ExpertDispatcher.
#include <memory>
#include <vector>

#include "model/loss_weights.h"
#include "model/mlp.h"
#include "runtime/config/config.h"
#include "runtime/parameters.h"

namespace engram {

// parallel/ types, declared only: model headers stay free of parallel/ headers.
class ExpertDispatcher;
class ProcessGroups;

class MoELayer {
 public:
  // Registers layers.{layer}.moe.router.weight [E,D] (Decay, N(0,init_std)),
  // layers.{layer}.moe.router.bias [E] (NotTrained, 0), moe.experts.{w1,w3} [E,F_e,D] (Decay, N(0,init_std)),
  // moe.experts.w2 [E,D,F_e] (Decay, N(0, init_std/sqrt(2L))) and, if S > 0, the shared SwiGluMlp.
  // groups null: one process holds every expert. Otherwise the experts are registered
  // ShardKind::Experts holding this rank's block (layout().local_experts()) and forward / backward
  // are collective over groups->expert_parallel().
  MoELayer(const ModelConfig& cfg, int layer, ParameterRegistry& params, ProcessGroups* groups = nullptr);
  ~MoELayer();

  // x [N, D] (already normed) -> y [N, D], plus residual [N, D] when given (the block's residual
  // stream: the shared experts' last product adds it as it writes, the routed experts' sum adds onto
  // that; no separate pass). Computes the aux / z-loss values of this micro-batch (weighted by `w`)
  // and keeps what backward needs. x is f32: the router multiplies it in float32.
  Tensor forward(const Tensor& x, const LossWeights& w, const Tensor& residual = Tensor());
  // dy [N, D] -> dx [N, D]; accumulates parameter gradients, including the aux / z-loss gradients
  // with the weights given to forward.
  Tensor backward(const Tensor& dy);

  // Of the last forward: this rank's (token, k) assignments per (global) expert; weighted aux and z
  // loss values (already multiplied by their coefficients and LossWeights, i.e. their contribution to
  // the objective).
  const std::vector<int64_t>& last_load() const { return load_; }
  double last_aux_loss() const { return aux_loss_; }
  double last_z_loss() const { return z_loss_; }
  const Tensor& last_scores() const;  // router scores [N, E] (before the bias), on the model's device

  Parameter& balancing_bias() { return bias_; }
  // Token traffic of the last forward / backward (null without process groups).
  const ExpertDispatcher* dispatcher() const { return dispatcher_.get(); }

 private:
  struct Saved;  // what backward needs from the last forward
  struct ExpertSaved;
  // The held experts on rows grouped by local expert (offsets: held experts + 1); saves what
  // experts_backward needs.
  Tensor experts_forward(const Tensor& rows, const std::vector<int64_t>& offsets, ExpertSaved& saved);
  // d_outputs -> d_rows; accumulates the held experts' gradients.
  Tensor experts_backward(const Tensor& d_out, const std::vector<int64_t>& offsets,
                          const ExpertSaved& saved);

  const ModelConfig& cfg_;
  Parameter& router_;
  Parameter& bias_;
  Parameter& w1_;
  Parameter& w3_;
  Parameter& w2_;
  std::unique_ptr<SwiGluMlp> shared_;
  std::unique_ptr<ExpertDispatcher> dispatcher_;
  std::shared_ptr<Saved> saved_;
  std::vector<int64_t> load_;
  double aux_loss_ = 0.0, z_loss_ = 0.0;
};

}  // namespace engram
