#pragma once
// MoE feed-forward layer (MODEL.md §3): router, biased top-k, routed experts (stacked SwiGLU),
// shared experts, optional aux loss and z-loss. Expert-parallel dispatch plugs in later behind
// the same forward/backward.
#include <memory>
#include <vector>

#include "model/loss_weights.h"
#include "model/mlp.h"
#include "runtime/config/config.h"
#include "runtime/parameters.h"

namespace engram {

class MoELayer {
 public:
  // Registers layers.{layer}.moe.router.weight [E,D] (Decay, N(0,init_std)),
  // layers.{layer}.moe.router.bias [E] (NotTrained, 0), moe.experts.{w1,w3} [E,F_e,D] (Decay, N(0,init_std)),
  // moe.experts.w2 [E,D,F_e] (Decay, N(0, init_std/sqrt(2L))) and, if S > 0, the shared SwiGluMlp.
  MoELayer(const ModelConfig& cfg, int layer, ParameterRegistry& params);

  // x [N, D] (already normed) -> y [N, D]. Computes the aux / z-loss values of this micro-batch
  // (weighted by `w`) and keeps what backward needs.
  Tensor forward(const Tensor& x, const LossWeights& w);
  // dy [N, D] -> dx [N, D]; accumulates parameter gradients, including the aux / z-loss gradients
  // with the weights given to forward.
  Tensor backward(const Tensor& dy);

  // Of the last forward: (token, k) assignments per expert; weighted aux and z loss values (already
  // multiplied by their coefficients and LossWeights, i.e. their contribution to the objective).
  const std::vector<int64_t>& last_load() const { return load_; }
  double last_aux_loss() const { return aux_loss_; }
  double last_z_loss() const { return z_loss_; }

  Parameter& balancing_bias() { return bias_; }

 private:
  struct Saved;  // activations of the last forward
  const ModelConfig& cfg_;
  Parameter& router_;
  Parameter& bias_;
  Parameter& w1_;
  Parameter& w3_;
  Parameter& w2_;
  std::unique_ptr<SwiGluMlp> shared_;
  std::shared_ptr<Saved> saved_;
  std::vector<int64_t> load_;
  double aux_loss_ = 0.0, z_loss_ = 0.0;
};

}  // namespace engram
