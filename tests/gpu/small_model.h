#pragma once
// The small model of the GPU model tests: every feature on (a dense and two MoE layers with a shared
// expert, aux and z-loss, two Engram layers), small enough to run on the CPU beside the GPU.
#include "runtime/config/config.h"

namespace engram::testing_util {

constexpr int kSmallModelVocab = 97;

// head_dim 32 (d_model 64, 2 heads): the float32 attention kernels in either matmul precision.
inline ModelConfig small_model_config() {
  ModelConfig cfg;
  cfg.set_vocab_size(kSmallModelVocab);
  cfg.set_d_model(64);
  cfg.set_n_heads(2);
  cfg.set_n_layers(3);
  cfg.set_n_dense_layers(1);
  cfg.set_d_ff(96);
  cfg.set_seed(7);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(8);
  moe->set_top_k(2);
  moe->set_expert_d_ff(32);
  moe->set_n_shared_experts(1);
  moe->set_aux_loss_coeff(0.01f);
  moe->set_z_loss_coeff(0.001f);
  auto* engram = cfg.mutable_engram();
  engram->add_layers(0);
  engram->add_layers(2);
  engram->set_max_ngram(3);
  engram->set_heads_per_ngram(2);
  engram->set_head_dim(8);
  engram->add_table_size(101);
  engram->add_table_size(103);
  return cfg;
}

// The same at head_dim 64 (d_model 128, 2 heads), where the tensor-core attention runs under bf16
// matmuls and keeps q, k, v, o and dV in bf16.
inline ModelConfig head_dim_64_model_config() {
  ModelConfig cfg = small_model_config();
  cfg.set_d_model(128);
  return cfg;
}

}  // namespace engram::testing_util
