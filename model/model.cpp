#include "model/model.h"

#include <algorithm>
#include <string>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "kernels/ngram_hash.h"
#include "runtime/trace_range.h"

namespace engram {

namespace {

const ModelConfig& validated(const ModelConfig& cfg) {
  validate_model_config(cfg);
  return cfg;
}

// The compression table as an i32 [V] tensor; empty `compress` means the identity.
Tensor compression_table(const ModelConfig& cfg, std::vector<int32_t> compress) {
  const int64_t vocab = cfg.vocab_size();
  if (compress.empty()) {
    compress.resize(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) compress[i] = static_cast<int32_t>(i);
  }
  EG_CHECK(static_cast<int64_t>(compress.size()) == vocab, "tokenizer compression table has ",
           compress.size(), " entries but model.vocab_size = ", vocab,
           " (one compressed id per raw id expected)");
  for (size_t i = 0; i < compress.size(); ++i)
    EG_CHECK(compress[i] >= 0 && compress[i] < vocab, "tokenizer compression table maps raw id ", i, " to ",
             compress[i], ", outside [0, model.vocab_size = ", vocab, ")");
  return Tensor::from_vector(compress, {vocab});
}

// V' = number of distinct compressed ids. Canonical ids are dense (MODEL.md §4.1), so they must
// cover [0, V') exactly; a gap would change V' and with it every hash multiplier.
int64_t compressed_vocab_size(const Tensor& compress) {
  const std::vector<int32_t> ids = compress.to_vector<int32_t>();
  const int64_t v_prime = *std::max_element(ids.begin(), ids.end()) + 1;
  std::vector<bool> used(static_cast<size_t>(v_prime), false);
  for (int32_t id : ids) used[static_cast<size_t>(id)] = true;
  for (int64_t c = 0; c < v_prime; ++c)
    EG_CHECK(used[static_cast<size_t>(c)], "tokenizer compression table is not dense: no raw id maps to ", c,
             " although ids up to ", v_prime - 1, " are used (canonical ids must cover [0, V'))");
  return v_prime;
}

void check_batch(const Batch& batch) {
  EG_CHECK(batch.inputs.defined() && batch.targets.defined(), "batch: inputs and targets must both be set");
  check_dtype(batch.inputs, DType::I32, "batch inputs");
  check_dtype(batch.targets, DType::I32, "batch targets");
  EG_CHECK(batch.inputs.ndim() == 2 && batch.inputs.numel() > 0,
           "batch inputs must be a non-empty [B, T], got ", shape_str(batch.inputs.shape()));
  EG_CHECK(batch.targets.shape() == batch.inputs.shape(), "batch targets ", shape_str(batch.targets.shape()),
           " must have the shape of the inputs ", shape_str(batch.inputs.shape()));
}

}  // namespace

struct Model::Activations {
  // normed and output as the products take them (kernels::matmul_operand, rounded once per forward)
  Tensor normed;   // final RMSNorm output [B, T, D]
  Tensor output;   // output weight [V, D]
  Tensor logits;   // [B·T, V]
  Tensor targets;  // i32 [B·T]
};

Model::Model(const ModelConfig& cfg, std::vector<int32_t> compress, ProcessGroups* groups, Device device)
    : cfg_(validated(cfg)),
      groups_(groups),
      device_(device),
      compress_(compression_table(cfg_, std::move(compress))),
      compress_device_(compress_.to(device)),
      vocab_compressed_(compressed_vocab_size(compress_)),
      hashing_(has_engram(cfg_) ? make_engram_hashing(cfg_, vocab_compressed_)
                                : std::vector<EngramLayerHash>{}),
      tok_embeddings_(params_.add("tok_embeddings.weight", {cfg_.vocab_size(), cfg_.d_model()},
                                  OptimGroup::Decay, {InitKind::Normal, cfg_.init_std()})),
      blocks_(make_blocks()),
      head_first_param_(params_.all().size()),
      final_norm_(params_, "norm.weight", cfg_.d_model(), cfg_.norm_eps()),
      output_(cfg_.tie_embeddings() ? tok_embeddings_
                                    : params_.add("output.weight", {cfg_.vocab_size(), cfg_.d_model()},
                                                  OptimGroup::Decay, {InitKind::Normal, cfg_.init_std()})) {
  params_.initialize(cfg_.seed());
  params_.move_to(device_);
}

std::vector<std::unique_ptr<Block>> Model::make_blocks() {
  const int64_t pad_c = has_engram(cfg_) ? compress_.data<int32_t>()[engram_pad_id(cfg_)] : 0;
  std::vector<std::unique_ptr<Block>> blocks;
  size_t next_engram = 0;  // hashing_ follows engram.layers, which ascend
  for (int l = 0; l < cfg_.n_layers(); ++l) {
    const bool has_module = next_engram < hashing_.size() && hashing_[next_engram].layer == l;
    const EngramLayerHash* hash = has_module ? &hashing_[next_engram++] : nullptr;
    block_first_param_.push_back(params_.all().size());
    blocks.push_back(std::make_unique<Block>(cfg_, l, hash, pad_c, params_, groups_));
  }
  EG_ASSERT(next_engram == hashing_.size(), "Engram hash plans not matched to layers");
  return blocks;
}

std::vector<MoELayer*> Model::moe_layers() {
  std::vector<MoELayer*> layers;
  for (auto& block : blocks_)
    if (block->moe()) layers.push_back(block->moe());
  return layers;
}

std::vector<EngramModule*> Model::engram_modules() {
  std::vector<EngramModule*> modules;
  for (auto& block : blocks_)
    if (block->engram()) modules.push_back(block->engram());
  return modules;
}

Batch Model::on_device(const Batch& batch) const {
  check_batch(batch);
  return {batch.inputs.to(device_), batch.targets.to(device_)};
}

Model::Activations Model::forward_to_logits(const Batch& batch, const LossWeights& w) {
  const Tensor& inputs = batch.inputs;
  Tensor h = Tensor::empty({inputs.dim(0), inputs.dim(1), cfg_.d_model()}, DType::F32, inputs.device());
  kernels::embedding_gather(tok_embeddings_.value, inputs, h);
  // Engram layers hash the compressed ids; compress once for all of them. Their lookups depend on
  // nothing else, so all start here, before the first block (on NCCL the row transfers of a sharded
  // table then overlap the blocks below each Engram layer).
  Tensor ids_c;
  if (!hashing_.empty()) {
    ids_c = Tensor::empty(inputs.shape(), DType::I32, inputs.device());
    kernels::compress_ids(inputs, compress_device_, ids_c);
    const TraceRange range("engram lookup");
    for (EngramModule* engram : engram_modules()) engram->start_lookup(ids_c);
  }
  for (auto& block : blocks_) h = block->forward(h, ids_c, w);

  const TraceRange range("head forward");
  Activations a;
  // Only the logits and their weight gradient take the normed rows: written in the products' dtype.
  a.normed = final_norm_.forward(h, kernels::matmul_operand_dtype(h.device()));
  a.output = kernels::matmul_operand(output_.value);  // taken by the logits and their input gradient
  // All B·T rows of logits at once; chunking over tokens is a later memory optimization.
  a.logits = Tensor::empty({inputs.numel(), cfg_.vocab_size()}, DType::F32, inputs.device());
  kernels::gemm(a.normed, false, a.output, true, a.logits);
  a.targets = batch.targets.view({inputs.numel()});
  return a;
}

ForwardStats Model::collect_stats(const Tensor& losses) {
  ForwardStats stats;
  // Summed in double, in token order, so the loss does not depend on anything but the inputs.
  for (float loss : losses.to_vector<float>()) stats.ce_sum += loss;
  stats.n_targets = losses.numel();
  for (auto& block : blocks_) {
    if (EngramModule* engram = block->engram()) stats.engram_gate_mean.push_back(engram->last_gate_mean());
    if (MoELayer* moe = block->moe()) {
      stats.aux_loss += moe->last_aux_loss();
      stats.z_loss += moe->last_z_loss();
      stats.expert_load.push_back(moe->last_load());
    }
  }
  return stats;
}

ForwardStats Model::forward_backward(const Batch& host_or_device_batch, const LossWeights& w,
                                     const GradientsFinal& gradients_final) {
  const auto final_from = [&](size_t first) {
    if (gradients_final) gradients_final(first);
  };
  const Batch batch = on_device(host_or_device_batch);
  Activations a = forward_to_logits(batch, w);
  Tensor losses = Tensor::empty({a.targets.numel()}, DType::F32, a.logits.device());
  Tensor dh;
  {
    const TraceRange range("head backward");
    // The logits are not needed after the loss. Their gradient is written in the dtype the two
    // products take: over the logits themselves in f32, else as a bf16 tensor (no f32 copy to round),
    // after which the logits are released.
    const Device dev = a.logits.device();
    const DType operand_dtype = kernels::matmul_operand_dtype(dev);
    Tensor dlogits = operand_dtype == DType::F32 ? a.logits : Tensor::empty(a.logits.shape(), operand_dtype, dev);
    kernels::cross_entropy_forward_backward(a.logits, a.targets, w.per_token, losses, dlogits);
    a.logits = Tensor();

    kernels::gemm(dlogits, true, a.normed, false, output_.grad, 1.0f, 1.0f);
    Tensor dnormed = Tensor::empty(a.normed.shape(), DType::F32, dev);
    kernels::gemm(dlogits, false, a.output, false, dnormed);
    dh = final_norm_.backward(dnormed);
  }
  final_from(head_first_param_);  // the final norm and an untied head (a tied one is parameter 0)
  for (size_t l = blocks_.size(); l-- > 0;) {
    dh = blocks_[l]->backward(dh);
    final_from(block_first_param_[l]);
  }
  kernels::embedding_scatter_add(dh, batch.inputs, tok_embeddings_.grad);
  final_from(0);
  return collect_stats(losses);
}

ForwardStats Model::forward(const Batch& host_or_device_batch) {
  const Batch batch = on_device(host_or_device_batch);
  // Weighted as a global batch of its own, so aux and z-loss come out as this batch's means.
  const LossWeights w{1.0f / static_cast<float>(batch.targets.numel()), 1.0f};
  Activations a = forward_to_logits(batch, w);
  Tensor losses = Tensor::empty({a.targets.numel()}, DType::F32, a.logits.device());
  kernels::cross_entropy_forward(a.logits, a.targets, losses);
  return collect_stats(losses);
}

}  // namespace engram
