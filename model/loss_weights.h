#pragma once
// How one micro-batch's loss terms are weighted so that gradients summed over every micro-batch of
// every rank equal the gradient of the global-batch objective (MODEL.md §2, §3).
namespace engram {

struct LossWeights {
  // 1 / (targets in the global batch): weights per-token sums (cross-entropy, router z-loss).
  float per_token = 1.0f;
  // 1 / (micro-batches in the global batch, over all ranks): weights per-micro-batch terms (the
  // MoE auxiliary loss, defined over one micro-batch).
  float per_micro_batch = 1.0f;
};

}  // namespace engram
