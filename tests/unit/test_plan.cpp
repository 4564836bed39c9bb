// The run planner (model/plan.h): its analytic per-group parameter counts equal sums over the
// registry of a Model built from the same config, exactly, for configs with and without MoE,
// Engram, shared experts and tied embeddings, at odd sizes; the table rows equal the built tables';
// FLOPs match a case worked out by hand; the per-rank parameter memory follows the layout
// (routed experts / expert-parallel size, table rows / world size); bad layouts are rejected.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/plan.h"
#include "parallel/nccl_communicator.h"

namespace engram {
namespace {

// Registry values summed per plan group, the group read off the parameter's name (MODEL.md §7).
struct RegistryGroups {
  std::map<std::string, int64_t> sums;
  std::map<int, int64_t> table_rows;  // layer → rows
  int64_t total = 0;
};

int layer_of(const std::string& name) { return std::stoi(name.substr(std::string("layers.").size())); }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

RegistryGroups group_registry(const Model& model) {
  const ModelConfig& cfg = model.config();
  RegistryGroups g;
  for (const Parameter* p : model.params().all()) {
    const std::string& n = p->name;
    const int64_t numel = p->global_numel();
    g.total += numel;
    std::string group;
    if (n == "tok_embeddings.weight")
      group = "tok_embeddings";
    else if (n == "output.weight")
      group = "output";
    else if (n == "norm.weight")
      group = "final_norm";
    else if (contains(n, ".attn_norm.") || contains(n, ".attn."))
      group = "attention";
    else if (contains(n, ".mlp."))
      group = "dense_mlp";
    else if (contains(n, ".ffn_norm."))
      group = layer_of(n) < cfg.n_dense_layers() ? "dense_mlp" : "moe_norms";
    else if (contains(n, ".moe.router.weight"))
      group = "router";
    else if (contains(n, ".moe.router.bias"))
      group = "balancing_biases";
    else if (contains(n, ".moe.experts."))
      group = "routed_experts";
    else if (contains(n, ".moe.shared."))
      group = "shared_experts";
    else if (contains(n, ".engram.table")) {
      group = "engram_tables";
      g.table_rows[layer_of(n)] = p->global_shape[0];
    } else if (contains(n, ".engram."))
      group = "engram_projections";
    else
      ADD_FAILURE() << "parameter " << n << " fits no plan group";
    g.sums[group] += numel;
  }
  return g;
}

ModelConfig base_config() {
  ModelConfig cfg;
  cfg.set_vocab_size(37);
  cfg.set_d_model(12);
  cfg.set_n_heads(3);
  cfg.set_n_layers(3);
  cfg.set_n_dense_layers(3);
  cfg.set_d_ff(13);
  return cfg;
}

void add_moe(ModelConfig& cfg, int dense, int experts, int top_k, int d_ff, int shared) {
  cfg.set_n_dense_layers(dense);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(experts);
  moe->set_top_k(top_k);
  moe->set_expert_d_ff(d_ff);
  moe->set_n_shared_experts(shared);
}

void add_engram(ModelConfig& cfg, std::vector<int> layers, int max_ngram, int heads, int head_dim,
                std::vector<int64_t> sizes) {
  auto* g = cfg.mutable_engram();
  for (int l : layers) g->add_layers(l);
  g->set_max_ngram(max_ngram);
  g->set_heads_per_ngram(heads);
  g->set_head_dim(head_dim);
  for (int64_t s : sizes) g->add_table_size(s);
}

void expect_counts_match_model(const ModelConfig& cfg) {
  SCOPED_TRACE(config_to_text(cfg));
  const ParameterCounts c = count_parameters(cfg);
  const Model model(cfg);
  RegistryGroups g = group_registry(model);

  EXPECT_EQ(c.tok_embeddings, g.sums["tok_embeddings"]);
  EXPECT_EQ(c.output, g.sums["output"]);
  EXPECT_EQ(c.final_norm, g.sums["final_norm"]);
  EXPECT_EQ(c.attention, g.sums["attention"]);
  EXPECT_EQ(c.dense_mlp, g.sums["dense_mlp"]);
  EXPECT_EQ(c.moe_norms, g.sums["moe_norms"]);
  EXPECT_EQ(c.router, g.sums["router"]);
  EXPECT_EQ(c.routed_experts_active + c.routed_experts_inactive, g.sums["routed_experts"]);
  EXPECT_EQ(c.shared_experts, g.sums["shared_experts"]);
  EXPECT_EQ(c.engram_tables, g.sums["engram_tables"]);
  EXPECT_EQ(c.engram_projections, g.sums["engram_projections"]);
  EXPECT_EQ(c.balancing_biases, g.sums["balancing_biases"]);
  EXPECT_EQ(c.total(), g.total - g.sums["balancing_biases"]);
  EXPECT_EQ(c.total_with_buffers(), g.total);

  // Every expert has the same size, so the active share is exactly top_k / n_routed_experts.
  const int64_t experts = has_moe(cfg) ? cfg.moe().n_routed_experts() : 1;
  const int64_t top_k = has_moe(cfg) ? cfg.moe().top_k() : 0;
  EXPECT_EQ(c.routed_experts_active * experts, g.sums["routed_experts"] * top_k);

  // Table rows per layer, and the values one token reads: one head_dim row per head.
  const std::vector<int64_t> rows = engram_table_rows(cfg);
  ASSERT_EQ(rows.size(), g.table_rows.size());
  int64_t values_per_token = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i], g.table_rows[cfg.engram().layers(static_cast<int>(i))]);
    values_per_token +=
        int64_t{cfg.engram().max_ngram() - 1} * cfg.engram().heads_per_ngram() * cfg.engram().head_dim();
  }
  EXPECT_EQ(c.engram_table_values_per_token, values_per_token);
  EXPECT_EQ(c.activated_per_token(), g.total - g.sums["balancing_biases"] - g.sums["engram_tables"] -
                                         (g.sums["routed_experts"] - c.routed_experts_active) +
                                         values_per_token);
}

TEST(Plan, DenseOnly) { expect_counts_match_model(base_config()); }

TEST(Plan, DenseTied) {
  ModelConfig cfg = base_config();
  cfg.set_tie_embeddings(true);
  expect_counts_match_model(cfg);
}

TEST(Plan, MoeWithoutSharedExperts) {
  ModelConfig cfg = base_config();
  add_moe(cfg, 1, 5, 3, 7, 0);
  expect_counts_match_model(cfg);
}

TEST(Plan, AllMoeLayersWithSharedExpertsTied) {
  ModelConfig cfg = base_config();
  cfg.set_n_layers(2);
  cfg.set_tie_embeddings(true);
  add_moe(cfg, 0, 3, 1, 5, 2);
  expect_counts_match_model(cfg);
}

TEST(Plan, EngramOnDenseModel) {
  ModelConfig cfg = base_config();
  add_engram(cfg, {0, 2}, 2, 3, 5, {13});
  expect_counts_match_model(cfg);
}

TEST(Plan, MoeAndEngramOddSizes) {
  ModelConfig cfg = base_config();
  cfg.set_n_layers(5);
  add_moe(cfg, 2, 7, 2, 3, 1);
  add_engram(cfg, {1, 3, 4}, 4, 2, 3, {11, 7, 33});
  cfg.mutable_engram()->set_conv_kernel(3);
  expect_counts_match_model(cfg);
}

// The quickstart model of configs/tiny.pbtxt: the numbers engram-plan prints for it.
TEST(Plan, QuickstartConfig) {
  const ExperimentConfig cfg = load_config(std::string(ENGRAM_SOURCE_DIR) + "/configs/tiny.pbtxt");
  expect_counts_match_model(cfg.model());
}

// V=10, D=4, L=2 (H=2), layer 0 dense (F=6), layer 1 MoE (E=3, top-2, F_e=5, one shared expert),
// Engram at layer 1 (orders 2..2, one head of width 2, so d_mem = 2); T=8, global batch 3.
ExperimentConfig hand_worked_case() {
  ExperimentConfig cfg;
  ModelConfig& m = *cfg.mutable_model();
  m.set_vocab_size(10);
  m.set_d_model(4);
  m.set_n_heads(2);
  m.set_n_layers(2);
  m.set_d_ff(6);
  add_moe(m, 1, 3, 2, 5, 1);
  add_engram(m, {1}, 2, 1, 2, {5});
  cfg.mutable_train()->set_seq_len(8);
  cfg.mutable_train()->set_global_batch_size(3);
  cfg.mutable_optim()->set_warmup_steps(0);
  return cfg;
}

TEST(Plan, FlopsOfAHandWorkedCase) {
  ExperimentConfig cfg = hand_worked_case();
  ModelConfig& m = *cfg.mutable_model();

  const Plan plan = make_plan(cfg);
  // Matmul weights a token meets:
  //   attention 2 layers · 4·D² = 2·64 = 128;  dense MLP 3·D·F = 72;  router E·D = 12;
  //   2 active experts 2·3·F_e·D = 120;  shared expert 3·F_e·D = 60;  Engram W_K, W_V 2·D·d_mem = 16;
  //   LM head V·D = 40.  Total 448.
  EXPECT_EQ(plan.flops.matmul_params_per_token, 448);
  // Attention scores and values, fwd + bwd, causal: 6·L·T·D = 6·2·8·4 = 384.
  EXPECT_EQ(plan.flops.attention_per_token, 384);
  EXPECT_EQ(plan.flops.per_token, 6 * 448 + 384);  // 3072
  EXPECT_EQ(plan.flops.tokens_per_step, 24);
  EXPECT_DOUBLE_EQ(plan.flops.per_step, 3072.0 * 24);

  // Tying the embeddings does not remove the LM head's matmul.
  m.set_tie_embeddings(true);
  EXPECT_EQ(make_plan(cfg).flops.matmul_params_per_token, 448);
}

// Parameter bytes per rank: dense parts whole, routed experts / expert-parallel, table rows / world
// (rounded up: the largest shard).
TEST(Plan, MemoryPerRankFollowsTheLayout) {
  ExperimentConfig cfg;
  *cfg.mutable_model() = base_config();
  cfg.mutable_model()->set_n_layers(4);
  add_moe(*cfg.mutable_model(), 1, 4, 2, 5, 1);
  add_engram(*cfg.mutable_model(), {1, 2}, 3, 2, 3, {17, 19});
  cfg.mutable_train()->set_seq_len(9);
  cfg.mutable_train()->set_global_batch_size(12);
  cfg.mutable_train()->set_micro_batch_size(3);
  cfg.mutable_optim()->set_warmup_steps(0);

  const Model model(cfg.model());
  RegistryGroups g = group_registry(model);
  const std::vector<int64_t> rows = engram_table_rows(cfg.model());
  for (auto [world, ep] : std::vector<std::pair<int, int>>{{1, 1}, {2, 1}, {4, 2}, {4, 4}}) {
    SCOPED_TRACE("world " + std::to_string(world) + " ep " + std::to_string(ep));
    const Plan plan = make_plan(cfg, {world, ep});
    int64_t local_tables = 0;
    for (int64_t r : rows) local_tables += (r + world - 1) / world * cfg.model().engram().head_dim();
    const int64_t dense_trained = g.total - g.sums["balancing_biases"] - g.sums["engram_tables"] -
                                  g.sums["routed_experts"] + g.sums["routed_experts"] / ep;
    EXPECT_EQ(plan.memory.local_parameters, dense_trained + local_tables + g.sums["balancing_biases"]);
    EXPECT_EQ(plan.memory.parameters, 4 * plan.memory.local_parameters);
    EXPECT_EQ(plan.memory.gradients, 4 * dense_trained);
    EXPECT_EQ(plan.memory.adam_moments, 8 * (dense_trained + local_tables));
    EXPECT_EQ(plan.memory.micro_batch, 3);
    EXPECT_EQ(plan.memory.micro_steps, 12 / world / 3);
    EXPECT_GT(plan.memory.activations, 0);
    EXPECT_GT(plan.memory.table_row_grads, 0);
    EXPECT_EQ(plan.memory.total(), plan.memory.parameters + plan.memory.gradients + plan.memory.adam_moments +
                                       plan.memory.table_row_grads + plan.memory.activations);
  }
  // The whole single-rank parameter memory is the registry's.
  EXPECT_EQ(make_plan(cfg).memory.local_parameters, g.total);
}

// Activations grow linearly with the micro-batch: twice the sequences, twice the bytes.
TEST(Plan, ActivationsScaleWithTheMicroBatch) {
  ExperimentConfig cfg;
  *cfg.mutable_model() = base_config();
  cfg.mutable_train()->set_seq_len(7);
  cfg.mutable_train()->set_global_batch_size(4);
  cfg.mutable_optim()->set_warmup_steps(0);
  cfg.mutable_train()->set_micro_batch_size(1);
  const int64_t one = make_plan(cfg).memory.activations;
  cfg.mutable_train()->set_micro_batch_size(2);
  EXPECT_EQ(make_plan(cfg).memory.activations, 2 * one);
}

// On the GPU the same tensors, plus the cuBLASLt workspace and, with bf16 matmuls, the bf16 copies
// kept from forward to backward: every weight the products take (the hand-worked case's 448 with all
// 3 experts instead of the 2 active ones: 508 values) and the head's dlogits [micro-batch tokens, V]
// (one sequence of 8 here, V = 10). With bf16 matmuls the activations that the GPU keeps in bf16 take
// 2 bytes less per value (d_h 2 has no tensor-core attention, so q, k, v, o stay f32), per token:
// the attention norms' outputs 2·D = 8 values; the dense FFN's normed input, gate, up and act D + 3·F
// = 22; the MoE's gathered inputs and expert outputs 2·K·D = 16, gate, up, act 3·K·F_e = 30 and the
// shared expert's 3·F_e = 15, less its bf16 input copy D = 4 (new); the head norm's output D = 4:
// 91 values, 182 bytes; and the largest layer, the MoE one, once more for its gradient buffers:
// 4 + 16 + 30 + 15 - 4 = 61 values, 122 bytes. 304 bytes a token, 8 tokens.
TEST(Plan, GpuPeakAddsTheWorkspaceAndTheBf16Copies) {
  ExperimentConfig cfg = hand_worked_case();
  cfg.mutable_train()->set_micro_batch_size(1);
  const MemoryEstimate cpu = make_plan(cfg).memory;
  EXPECT_EQ(cpu.device_extra, 0);
  cfg.mutable_runtime()->set_device(config::CUDA);
  cfg.mutable_runtime()->set_matmul_precision(config::FLOAT32);
  EXPECT_EQ(make_plan(cfg).memory.device_extra, 32 << 20);
  EXPECT_EQ(make_plan(cfg).memory.activations, cpu.activations);
  cfg.mutable_runtime()->set_matmul_precision(config::BF16);
  const MemoryEstimate gpu = make_plan(cfg).memory;
  EXPECT_EQ(gpu.device_extra, (32 << 20) + 2 * (508 + 8 * 10));
  EXPECT_EQ(gpu.total() - gpu.device_extra, cpu.total() - 8 * 304);
  EXPECT_EQ(gpu.activations, cpu.activations - 8 * 304);
  // Three GPUs, one expert each (two fewer expert copies of 60 values), plus the NCCL sums' scratch,
  // here all of the (small) gradients, under the bound.
  const MemoryEstimate three = make_plan(cfg, {3, 3}).memory;
  EXPECT_EQ(three.device_extra, gpu.device_extra - 2 * 2 * 60 + three.gradients);
  EXPECT_LT(three.gradients, kNcclScratchInFlightBytes);
}

TEST(Plan, RejectsImpossibleLayouts) {
  ExperimentConfig cfg;
  *cfg.mutable_model() = base_config();
  add_moe(*cfg.mutable_model(), 1, 4, 2, 5, 0);
  cfg.mutable_train()->set_global_batch_size(6);
  cfg.mutable_optim()->set_warmup_steps(0);
  auto message = [&](PlanLayout layout) {
    try {
      make_plan(cfg, layout);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({0, 1}).find("world size"), std::string::npos);
  EXPECT_NE(message({2, 4}).find("must divide the world size"), std::string::npos);
  EXPECT_NE(message({3, 3}).find("model.moe.n_routed_experts"), std::string::npos);
  EXPECT_NE(message({4, 1}).find("train.global_batch_size"), std::string::npos);
  cfg.mutable_model()->set_d_model(13);  // not divisible by n_heads: the config itself is invalid
  EXPECT_NE(message({1, 1}).find("model.d_model"), std::string::npos);
}

}  // namespace
}  // namespace engram
