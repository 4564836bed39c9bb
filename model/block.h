#pragma once
// One transformer layer l (MODEL.md §2) on the residual stream h [B, T, D]:
//   h = h + Engram_l(h, x')            (only if l is in engram.layers)
//   h = h + Attn_l(RMSNorm(h))
//   h = h + FFN_l(RMSNorm(h))          (SwiGLU MLP for l < n_dense_layers, else MoE)
#include <memory>
#include <string>

#include "model/attention.h"
#include "model/engram.h"
#include "model/loss_weights.h"
#include "model/mlp.h"
#include "model/moe.h"
#include "model/rmsnorm.h"

namespace engram {

class Block {
 public:
  // `engram_hash` is the layer's hash plan, or null when the layer has no Engram module. `groups`
  // (null: one process) shard the MoE experts and the Engram table (see MoELayer, EngramModule).
  Block(const ModelConfig& cfg, int layer, const EngramLayerHash* engram_hash, int64_t pad_compressed,
        ParameterRegistry& params, ProcessGroups* groups = nullptr);

  // h [B, T, D], ids_c i32 [B, T] compressed token ids (unused without Engram) -> new h [B, T, D].
  // `w` weights the MoE auxiliary terms of this micro-batch.
  Tensor forward(const Tensor& h, const Tensor& ids_c, const LossWeights& w);
  // Gradient of the layer output -> gradient of its input; accumulates parameter gradients.
  Tensor backward(const Tensor& dh);

  EngramModule* engram() { return engram_.get(); }  // null without Engram
  MoELayer* moe() { return moe_.get(); }            // null for a dense layer

 private:
  // Names of the block's profiler ranges ("layers.<l>.attn forward", ...), made once.
  struct RangeNames {
    std::string engram_forward, attn_forward, ffn_forward, ffn_backward, attn_backward, engram_backward;
  };
  static RangeNames range_names(int layer, bool dense);
  RangeNames ranges_;
  std::unique_ptr<EngramModule> engram_;
  RMSNormModule attn_norm_;
  Attention attn_;
  RMSNormModule ffn_norm_;
  std::unique_ptr<SwiGluMlp> mlp_;
  std::unique_ptr<MoELayer> moe_;
};

}  // namespace engram
