#include "model/plan.h"

#include <algorithm>
#include <string>

#include "kernels/attention.h"
#include "kernels/ngram_hash.h"
#include "parallel/nccl_communicator.h"
#include "runtime/cuda/device.h"

namespace engram {

namespace {

constexpr int64_t kF32 = 4;  // bytes per float32 value
constexpr int64_t kI64 = 8;  // bytes per table row id
constexpr int64_t kBf16 = 2;  // bytes per bf16 operand copy value

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t n_moe_layers(const ModelConfig& m) { return has_moe(m) ? m.n_layers() - m.n_dense_layers() : 0; }
int64_t n_engram_layers(const ModelConfig& m) { return has_engram(m) ? m.engram().layers_size() : 0; }
// Heads of one Engram layer, (max_ngram − 1)·heads_per_ngram, and its memory width d_mem.
int64_t engram_heads(const ModelConfig& m) {
  return int64_t{m.engram().max_ngram() - 1} * m.engram().heads_per_ngram();
}
int64_t engram_memory_dim(const ModelConfig& m) { return engram_heads(m) * m.engram().head_dim(); }

// One SwiGLU MLP of width f: w1, w3 [f, D] and w2 [D, f].
int64_t swiglu_params(int64_t d, int64_t f) { return 3 * d * f; }

// Engram module without its table: wk, wv [D, d_mem] + biases [D], q/k/conv norms [D], conv [w, D].
int64_t engram_projection_params(const ModelConfig& m) {
  const int64_t d = m.d_model();
  return 2 * d * engram_memory_dim(m) + 2 * d + 3 * d + int64_t{m.engram().conv_kernel()} * d;
}

// Values of the weights the products take, with `routed_experts` routed experts per MoE layer:
// attention, dense MLPs, routers, experts, shared experts, Engram W_K and W_V, and the LM head (tied
// or not, its product takes a [V, D] weight).
int64_t matmul_weights(const ModelConfig& m, int64_t routed_experts) {
  const int64_t d = m.d_model();
  int64_t weights = int64_t{m.n_layers()} * 4 * d * d                           // wq, wk, wv, wo
                    + int64_t{m.n_dense_layers()} * swiglu_params(d, m.d_ff())  // dense MLPs
                    + int64_t{m.vocab_size()} * d;                              // LM head
  if (has_moe(m)) {
    const auto& e = m.moe();
    weights += n_moe_layers(m) * (int64_t{e.n_routed_experts()} * d  // router
                                  + swiglu_params(d, (routed_experts + e.n_shared_experts()) * e.expert_d_ff()));
  }
  if (has_engram(m)) weights += n_engram_layers(m) * 2 * d * engram_memory_dim(m);  // W_K, W_V
  return weights;
}

// Bytes per value of the saved activations that the GPU keeps in bf16 under bf16 matmuls (float32
// everywhere else): what products take and write for elementwise kernels (operands; the routed
// experts' outputs too, also as a dispatcher brings them home), and the attention's q, k, v, o (its
// tensor-core head dims; at 128 only where the GPU has the shared memory, as an H100 does and an
// RTX 4090 does not: the plan assumes it).
struct ActivationWidths {
  int64_t operand = kF32, attention = kF32;
};

ActivationWidths activation_widths(const ExperimentConfig& cfg) {
  ActivationWidths w;
  if (cfg.runtime().device() != config::CUDA || cfg.runtime().matmul_precision() != config::BF16) return w;
  const ModelConfig& m = cfg.model();
  w.operand = kBf16;
  w.attention = kernels::tensor_core_attention_head_dim(head_dim(m)) ? kBf16 : kF32;
  return w;
}

// Saved activation bytes per token of each part, read off what the modules keep for backward
// (model/*.cpp; docs/ARCHITECTURE.md, Precision, for which are bf16 on the GPU). Index tensors count
// by their width.
struct ActivationsPerToken {
  int64_t embedding = 0, block_common = 0, dense_layer_ffn = 0, moe_layer_ffn = 0, engram = 0, head = 0;
};

ActivationsPerToken activations_per_token(const ModelConfig& m, const ActivationWidths& w) {
  const int64_t d = m.d_model();
  ActivationsPerToken a;
  a.embedding = kF32 * d;  // h = E[x], the first block's input
  // attn_norm output + rstd, q, k, v, o, the softmax log-sum-exp per head, the residual h_mid, the
  // ffn_norm's rstd and the block's output residual; the ffn_norm output is the FFN's (below).
  a.block_common = w.operand * d + kF32 + w.attention * 4 * d + kF32 * (m.n_heads() + d + 1 + d);
  a.dense_layer_ffn = w.operand * (d + 3 * int64_t{m.d_ff()});  // normed input, gate, up, silu(gate)·up
  if (has_moe(m)) {
    const auto& e = m.moe();
    const int64_t k = e.top_k(), fe = e.expert_d_ff(), experts = e.n_routed_experts();
    const int64_t shared = int64_t{e.n_shared_experts()} * fe;
    a.moe_layer_ffn = kF32 * d                  // normed input (the router's, float32)
                      + kF32 * 2 * experts      // router logits, scores
                      + kF32 * 4 * k            // top-k ids and weights, sort order, positions
                      + w.operand * k * d       // gathered inputs
                      + w.operand * k * d       // expert outputs
                      + w.operand * 3 * k * fe  // expert gate, up, act
                      + w.operand * 3 * shared  // shared expert gate, up, act
                      + (shared > 0 && w.operand != kF32 ? w.operand * d : 0)  // the shared experts' input copy
                      + kF32 * ((e.aux_loss_coeff() > 0 ? experts : 0) + (e.z_loss_coeff() > 0 ? experts : 0));
  }
  if (has_engram(m)) {
    // residual h_in, k, v, q/k norm outputs, u, conv norm output r, conv output c (8·D); the gathered
    // memory e (d_mem); row ids (i64: two floats per head); three rstd, score and gate.
    a.engram = kF32 * (8 * d + engram_memory_dim(m) + 2 * engram_heads(m) + 5);
  }
  // Final norm output + rstd, logits [V], per-token loss, and the gradient of the normed output.
  a.head = w.operand * d + kF32 * (1 + m.vocab_size() + 1 + d);
  return a;
}

// Activation bytes of one micro-batch of `tokens` tokens: everything saved across the forward,
// plus the largest single layer once more for the gradient buffers its backward allocates.
int64_t activation_bytes(const ModelConfig& m, const ActivationWidths& w, int64_t tokens) {
  const ActivationsPerToken a = activations_per_token(m, w);
  const std::vector<int32_t> engram_at(m.engram().layers().begin(), m.engram().layers().end());
  int64_t saved = a.embedding + a.head, largest_layer = 0;
  for (int l = 0; l < m.n_layers(); ++l) {
    const bool engram = has_engram(m) && std::find(engram_at.begin(), engram_at.end(), l) != engram_at.end();
    const int64_t layer = a.block_common + (l < m.n_dense_layers() ? a.dense_layer_ffn : a.moe_layer_ffn) +
                          (engram ? a.engram : 0);
    saved += layer;
    largest_layer = std::max(largest_layer, layer);
  }
  return tokens * (saved + largest_layer);
}

MemoryEstimate estimate_memory(const ExperimentConfig& cfg, const PlanLayout& layout,
                               const ParameterCounts& p, const std::vector<int64_t>& table_rows) {
  const ModelConfig& m = cfg.model();
  const auto& t = cfg.train();
  const int64_t world = layout.world_size, ep = layout.expert_parallel;
  EG_CHECK(t.global_batch_size() % world == 0, "train.global_batch_size = ", t.global_batch_size(),
           " must be divisible by the world size (", world, ") so that every rank gets whole sequences");
  const int64_t rank_batch = t.global_batch_size() / world;
  MemoryEstimate mem;
  mem.micro_batch = t.micro_batch_size() > 0 ? t.micro_batch_size() : rank_batch;
  EG_CHECK(rank_batch % mem.micro_batch == 0, "train.micro_batch_size = ", mem.micro_batch,
           " must divide the per-rank batch (train.global_batch_size / world size = ", rank_batch, ")");
  mem.micro_steps = rank_batch / mem.micro_batch;

  const int64_t routed = p.routed_experts_active + p.routed_experts_inactive;
  int64_t local_table_values = 0;
  for (int64_t rows : table_rows) local_table_values += ceil_div(rows, world) * m.engram().head_dim();
  const int64_t local_routed = routed / ep;  // n_routed_experts % ep == 0 is checked by make_plan
  const int64_t local_dense_trained = p.total() - p.engram_tables - routed + local_routed;
  mem.local_parameters = local_dense_trained + local_table_values + p.balancing_biases;
  mem.parameters = kF32 * mem.local_parameters;
  mem.gradients = kF32 * local_dense_trained;
  mem.adam_moments = 2 * kF32 * (local_dense_trained + local_table_values);

  // Row gradients: each micro-step appends, per Engram layer, one summed gradient per distinct row
  // touched (at most every head lookup of every rank's micro-batch landing in this rank's rows, at
  // most the rows held); the step then merges them into one more list of at most the rows held.
  if (has_engram(m)) {
    const int64_t lookups_reaching = world * mem.micro_batch * t.seq_len() * engram_heads(m);
    for (int64_t rows : table_rows) {
      const int64_t local_rows = ceil_div(rows, world);
      const int64_t per_micro = std::min(local_rows, lookups_reaching);
      const int64_t held = mem.micro_steps * per_micro + std::min(local_rows, mem.micro_steps * per_micro);
      mem.table_row_grads += held * (kF32 * m.engram().head_dim() + kI64);
    }
  }
  mem.activations = activation_bytes(m, activation_widths(cfg), mem.micro_batch * t.seq_len());
  if (cfg.runtime().device() == config::CUDA) {
    mem.device_extra = static_cast<int64_t>(kCublasWorkspaceBytes);
    // bf16 matmuls: the copies of every weight the products take, rounded once per forward and kept
    // for backward (this rank's experts), and the LM head's logits gradient [micro-batch tokens, V].
    if (cfg.runtime().matmul_precision() == config::BF16)
      mem.device_extra += kBf16 * (matmul_weights(m, has_moe(m) ? m.moe().n_routed_experts() / ep : 0) +
                                   mem.micro_batch * t.seq_len() * m.vocab_size());
    // Several GPUs: the scratch of the gradient buckets' sums in flight on NCCL (at most the
    // in-flight bound plus the bucket that crosses it, and never more than the gradients).
    if (world > 1)
      mem.device_extra += std::min(mem.gradients, kNcclScratchInFlightBytes + grad_bucket_bytes(cfg.parallel()));
  }
  return mem;
}

FlopEstimate estimate_flops(const ExperimentConfig& cfg) {
  const ModelConfig& m = cfg.model();
  FlopEstimate f;
  f.seq_len = cfg.train().seq_len();
  f.tokens_per_step = int64_t{cfg.train().global_batch_size()} * f.seq_len;
  f.matmul_params_per_token = matmul_weights(m, has_moe(m) ? m.moe().top_k() : 0);  // the active experts
  f.attention_per_token = 6 * int64_t{m.n_layers()} * f.seq_len * m.d_model();
  f.per_token = 6 * f.matmul_params_per_token + f.attention_per_token;
  f.per_step = static_cast<double>(f.per_token) * static_cast<double>(f.tokens_per_step);
  return f;
}

}  // namespace

int64_t ParameterCounts::total() const {
  return tok_embeddings + output + final_norm + attention + dense_mlp + moe_norms + router +
         routed_experts_active + routed_experts_inactive + shared_experts + engram_tables +
         engram_projections;
}

int64_t ParameterCounts::activated_per_token() const {
  return total() - routed_experts_inactive - engram_tables + engram_table_values_per_token;
}

std::vector<int64_t> engram_table_rows(const ModelConfig& m) {
  if (!has_engram(m)) return {};
  const auto& g = m.engram();
  const std::vector<std::vector<int64_t>> primes = kernels::engram_primes(
      g.layers_size(), g.max_ngram(), g.heads_per_ngram(), {g.table_size().begin(), g.table_size().end()});
  std::vector<int64_t> rows;
  for (const auto& layer : primes) {
    int64_t sum = 0;
    for (int64_t p : layer) sum += p;
    rows.push_back(sum);
  }
  return rows;
}

ParameterCounts count_parameters(const ModelConfig& m) {
  validate_model_config(m);
  const int64_t v = m.vocab_size(), d = m.d_model();
  ParameterCounts c;
  c.tok_embeddings = v * d;
  c.output = m.tie_embeddings() ? 0 : v * d;
  c.final_norm = d;
  c.attention = int64_t{m.n_layers()} * (d + 4 * d * d);
  c.dense_mlp = int64_t{m.n_dense_layers()} * (d + swiglu_params(d, m.d_ff()));
  if (has_moe(m)) {
    const auto& e = m.moe();
    const int64_t layers = n_moe_layers(m), expert = swiglu_params(d, e.expert_d_ff());
    c.moe_norms = layers * d;
    c.router = layers * e.n_routed_experts() * d;
    c.routed_experts_active = layers * e.top_k() * expert;
    c.routed_experts_inactive = layers * (e.n_routed_experts() - e.top_k()) * expert;
    c.shared_experts = layers * swiglu_params(d, int64_t{e.n_shared_experts()} * e.expert_d_ff());
    c.balancing_biases = layers * e.n_routed_experts();
  }
  if (has_engram(m)) {
    for (int64_t rows : engram_table_rows(m)) c.engram_tables += rows * m.engram().head_dim();
    c.engram_projections = n_engram_layers(m) * engram_projection_params(m);
    c.engram_table_values_per_token = n_engram_layers(m) * engram_memory_dim(m);
  }
  return c;
}

Plan make_plan(const ExperimentConfig& cfg, const PlanLayout& layout) {
  validate_config(cfg);
  const ModelConfig& m = cfg.model();
  EG_CHECK(layout.world_size >= 1, "world size = ", layout.world_size, " must be >= 1");
  EG_CHECK(layout.expert_parallel >= 1, "expert-parallel size = ", layout.expert_parallel, " must be >= 1");
  EG_CHECK(layout.world_size % layout.expert_parallel == 0, "expert-parallel size = ", layout.expert_parallel,
           " must divide the world size (", layout.world_size, ")");
  if (has_moe(m))
    EG_CHECK(m.moe().n_routed_experts() % layout.expert_parallel == 0,
             "expert-parallel size = ", layout.expert_parallel, " must divide model.moe.n_routed_experts (",
             m.moe().n_routed_experts(), ")");
  Plan plan;
  plan.layout = layout;
  plan.params = count_parameters(m);
  if (has_engram(m)) plan.engram_layers.assign(m.engram().layers().begin(), m.engram().layers().end());
  plan.engram_table_rows = engram_table_rows(m);
  plan.flops = estimate_flops(cfg);
  plan.memory = estimate_memory(cfg, layout, plan.params, plan.engram_table_rows);
  return plan;
}

nlohmann::json plan_to_json(const Plan& plan) {
  const ParameterCounts& p = plan.params;
  const FlopEstimate& f = plan.flops;
  const MemoryEstimate& mem = plan.memory;
  nlohmann::json j;
  j["layout"] = {{"world_size", plan.layout.world_size}, {"expert_parallel", plan.layout.expert_parallel}};
  j["parameters"] = {
      {"total", p.total()},
      {"activated_per_token", p.activated_per_token()},
      {"engram_table_values_per_token", p.engram_table_values_per_token},
      {"tied_embeddings", p.output == 0},
      {"groups",
       {{"tok_embeddings", p.tok_embeddings},
        {"output", p.output},
        {"final_norm", p.final_norm},
        {"attention", p.attention},
        {"dense_mlp", p.dense_mlp},
        {"moe_norms", p.moe_norms},
        {"router", p.router},
        {"routed_experts_active", p.routed_experts_active},
        {"routed_experts_inactive", p.routed_experts_inactive},
        {"shared_experts", p.shared_experts},
        {"engram_tables", p.engram_tables},
        {"engram_projections", p.engram_projections}}},
      {"buffers", {{"balancing_biases", p.balancing_biases}}},
  };
  nlohmann::json engram = nlohmann::json::array();
  for (size_t i = 0; i < plan.engram_layers.size(); ++i)
    engram.push_back({{"layer", plan.engram_layers[i]}, {"table_rows", plan.engram_table_rows[i]}});
  j["engram_tables"] = engram;
  j["flops"] = {{"formula", "per_token = 6 * matmul_params_per_token + 6 * n_layers * seq_len * d_model"},
                {"seq_len", f.seq_len},
                {"tokens_per_step", f.tokens_per_step},
                {"matmul_params_per_token", f.matmul_params_per_token},
                {"attention_per_token", f.attention_per_token},
                {"per_token", f.per_token},
                {"per_step", f.per_step}};
  j["memory_per_rank"] = {{"estimate", "float32 tensors on the run's device; activations are an estimate (docs/TOOLS.md)"},
                          {"micro_batch", mem.micro_batch},
                          {"micro_steps", mem.micro_steps},
                          {"local_parameters", mem.local_parameters},
                          {"parameters_bytes", mem.parameters},
                          {"gradients_bytes", mem.gradients},
                          {"adam_moments_bytes", mem.adam_moments},
                          {"table_row_grads_bytes", mem.table_row_grads},
                          {"activations_bytes", mem.activations},
                          {"device_extra_bytes", mem.device_extra},
                          {"total_bytes", mem.total()}};
  return j;
}

}  // namespace engram
