#pragma once
// Planning a run from its config alone (docs/TOOLS.md, engram-plan): parameter counts per group,
// training FLOPs and an estimate of the memory each rank needs. Everything is computed
// analytically from the config (the table rows from the Engram primes, exact integer arithmetic);
// no model is built, so plans for models far larger than this machine are instant.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "runtime/config/config.h"

namespace engram {

// Ranks of the run: the world, and the expert-parallel group size inside it (MODEL.md §3; DESIGN.md:
// routed experts divide over the expert-parallel group, Engram table rows over all ranks).
struct PlanLayout {
  int world_size = 1;
  int expert_parallel = 1;
};

// Global (unsharded) counts of float32 values, per group. The groups partition the model's
// parameter registry: every MODEL.md §7 tensor is in exactly one of them.
struct ParameterCounts {
  int64_t tok_embeddings = 0;           // tok_embeddings.weight
  int64_t output = 0;                   // output.weight; 0 when tie_embeddings (the head reuses E)
  int64_t final_norm = 0;               // norm.weight
  int64_t attention = 0;                // attn_norm + wq, wk, wv, wo of every layer
  int64_t dense_mlp = 0;                // ffn_norm + mlp.{w1,w2,w3} of the dense layers
  int64_t moe_norms = 0;                // ffn_norm of the MoE layers
  int64_t router = 0;                   // moe.router.weight
  int64_t routed_experts_active = 0;    // top_k of the routed experts, every MoE layer
  int64_t routed_experts_inactive = 0;  // the other n_routed_experts − top_k
  int64_t shared_experts = 0;           // moe.shared.{w1,w2,w3}
  int64_t engram_tables = 0;            // engram.table (rows from the primes × head_dim)
  int64_t engram_projections = 0;       // engram wk, wv (weights and biases), q/k/conv norms, conv
  int64_t balancing_biases = 0;         // moe.router.bias: buffers updated by a rule, not trained
  // Table values one token reads: Σ over Engram layers of (max_ngram − 1)·heads_per_ngram·head_dim.
  int64_t engram_table_values_per_token = 0;

  // Trained parameters: every group but the balancing biases.
  int64_t total() const;
  // Registry values including the balancing-bias buffers.
  int64_t total_with_buffers() const { return total() + balancing_biases; }
  // Parameters one token uses: all but the inactive routed experts and the tables, plus the table
  // values it reads.
  int64_t activated_per_token() const;
};

struct FlopEstimate {
  int64_t seq_len = 0;                  // T
  int64_t tokens_per_step = 0;          // global_batch_size · T
  int64_t matmul_params_per_token = 0;  // weights one token multiplies (LM head in, embedding lookups out)
  int64_t attention_per_token = 0;      // 6·L·T·D: scores and values, forward + backward, causal half
  int64_t per_token = 0;                // 6·matmul_params_per_token + attention_per_token
  double per_step = 0.0;                // per_token · tokens_per_step (all ranks)
};

// Bytes one rank holds on the CPU float32 backend. Activations are an estimate (docs/TOOLS.md).
struct MemoryEstimate {
  int64_t micro_batch = 0;       // sequences per rank per micro-step
  int64_t micro_steps = 0;       // micro-steps per optimizer step
  int64_t local_parameters = 0;  // values held (routed experts / expert_parallel, table rows / world)
  int64_t parameters = 0;        // bytes of local_parameters (balancing biases included)
  int64_t gradients = 0;         // dense gradients (tables have row gradients, biases none)
  int64_t adam_moments = 0;      // m and v of every trained local parameter (dense and table)
  int64_t table_row_grads = 0;   // bound on the Engram row-gradient buffers of one step
  int64_t activations = 0;       // saved activations of one micro-batch + the largest layer's backward
  // runtime.device CUDA only (0 on the CPU): the cuBLASLt workspace; with bf16 matmuls, the bf16
  // copies of every weight the products take (this rank's experts; kept from forward to backward)
  // and of the LM head's logits gradient; on several GPUs, the scratch of the gradient sums in
  // flight (NCCL).
  // The rest is counted as on the CPU, in float32: an upper bound on the GPU under bf16 matmuls,
  // where some saved activations (the operand copies) are bf16.
  int64_t device_extra = 0;
  int64_t total() const {
    return parameters + gradients + adam_moments + table_row_grads + activations + device_extra;
  }
};

struct Plan {
  PlanLayout layout;
  ParameterCounts params;
  std::vector<int64_t> engram_layers;      // layer indices with an Engram module
  std::vector<int64_t> engram_table_rows;  // rows of each Engram layer's table (Σ of its primes)
  FlopEstimate flops;
  MemoryEstimate memory;
};

// Global counts from the model section alone.
ParameterCounts count_parameters(const ModelConfig& model);
// Table rows of every Engram layer, in config order (empty without Engram).
std::vector<int64_t> engram_table_rows(const ModelConfig& model);

// The whole plan. Errors (engram::Error) name the rule a layout breaks, e.g. an expert-parallel
// size that does not divide the world size or the expert count.
Plan make_plan(const ExperimentConfig& cfg, const PlanLayout& layout = {});

// One JSON object (the engram-plan --json output; field names in docs/TOOLS.md).
nlohmann::json plan_to_json(const Plan& plan);

}  // namespace engram
