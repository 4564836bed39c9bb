#pragma once
// The whole language model (MODEL.md §2): token embeddings, L blocks, final RMSNorm, LM head and
// the cross-entropy loss, with an explicit backward through all of it.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/block.h"
#include "model/engram.h"
#include "model/loss_weights.h"
#include "model/moe.h"
#include "model/rmsnorm.h"
#include "runtime/config/config.h"
#include "runtime/parameters.h"

namespace engram {

// One micro-batch: raw token ids and next-token targets, both i32 [B, T].
struct Batch {
  Tensor inputs, targets;
};

struct ForwardStats {
  double ce_sum = 0.0;  // Σ cross-entropy over the micro-batch's targets (not normalized)
  int64_t n_targets = 0;
  double aux_loss = 0.0;  // Σ over MoE layers of the weighted auxiliary loss (its share of the objective)
  double z_loss = 0.0;    // Σ over MoE layers of the weighted router z-loss
  std::vector<std::vector<int64_t>> expert_load;  // per MoE layer: (token, k) assignments per expert
  std::vector<double> engram_gate_mean;           // per Engram layer: mean gate α
};

// Called during the backward pass each time more gradients are final for the micro-batch: those of
// the parameters registered at index >= first_final (params().all()), over a descending sequence of
// indices that ends with 0 once every gradient is. Gradient buckets start their sums from it.
using GradientsFinal = std::function<void(size_t first_final)>;

class Model {
 public:
  // `compress` maps raw ids [0, V) to compressed ids [0, V') (MODEL.md §4.1); empty = identity.
  // Registers every parameter (MODEL.md §7 names) and initializes them from cfg.seed().
  // `groups` (null: one process holding everything) make this rank hold its block of every MoE
  // layer's experts and its row range of every Engram table; forward / backward are then collective
  // over the groups (every rank calls them for each micro-batch). Init is sharding-invariant.
  // Parameters are initialized on the host (the same values on every device), then moved to
  // `device`; batches may come from the host, forward copies them over.
  explicit Model(const ModelConfig& cfg, std::vector<int32_t> compress = {}, ProcessGroups* groups = nullptr,
                 Device device = Device::CPU);
  Model(const Model&) = delete;  // modules hold references into the model
  Model& operator=(const Model&) = delete;

  // Forward and backward of one micro-batch: accumulates parameter gradients of
  // per_token · Σ CE + (weighted MoE aux and z-loss terms), the micro-batch's share of the objective.
  ForwardStats forward_backward(const Batch& batch, const LossWeights& w,
                                const GradientsFinal& gradients_final = {});
  // Evaluation: the loss terms of one micro-batch (aux and z-loss weighted as a batch of its own),
  // no gradients and no backward possible (modules still hold their last activations until the next
  // forward: they have no inference mode yet).
  ForwardStats forward(const Batch& batch);

  ParameterRegistry& params() { return params_; }
  const ParameterRegistry& params() const { return params_; }
  const ModelConfig& config() const { return cfg_; }
  const std::vector<EngramLayerHash>& engram_hashing() const { return hashing_; }
  int64_t vocab_compressed() const { return vocab_compressed_; }
  // i32 [V]: raw id -> compressed id (MODEL.md §4.1), as checkpoints record it.
  const Tensor& compress_table() const { return compress_; }
  std::vector<MoELayer*> moe_layers();
  std::vector<EngramModule*> engram_modules();
  ProcessGroups* groups() const { return groups_; }  // null: single process
  Device device() const { return device_; }

 private:
  struct Activations;  // what the head's backward needs from one forward
  Batch on_device(const Batch& batch) const;  // checked, and copied to the model's device
  Activations forward_to_logits(const Batch& batch, const LossWeights& w);  // batch on the device
  ForwardStats collect_stats(const Tensor& losses);  // losses [B·T], of the last forward
  std::vector<std::unique_ptr<Block>> make_blocks();

  ModelConfig cfg_;
  ProcessGroups* groups_;
  Device device_;
  Tensor compress_;         // i32 [V], on the host (checkpoints, pad id)
  Tensor compress_device_;  // the same on device_ (the same tensor on the CPU)
  int64_t vocab_compressed_;
  std::vector<EngramLayerHash> hashing_;
  ParameterRegistry params_;
  Parameter& tok_embeddings_;
  std::vector<size_t> block_first_param_;  // registration index of each block's first parameter
  std::vector<std::unique_ptr<Block>> blocks_;
  size_t head_first_param_;  // the final norm's, registered right after the blocks
  RMSNormModule final_norm_;
  Parameter& output_;  // output.weight, or tok_embeddings.weight when tied
};

}  // namespace engram
