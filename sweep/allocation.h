#pragma once
// Iso-parameter allocation of a sparse budget between routed experts and Engram tables (the ρ sweep,
// docs/SWEEP.md). Every count comes from the planner (model/plan.h), so what the sweep reports is what
// engram-plan reports for the built model.
#include <cstdint>

#include "runtime/config/config.h"

namespace engram {

// What a base model fixes. "Fixed" parameters are those of the base with only its top_k routed experts
// and without Engram tables (dense layers, attention, the router rows of the top_k experts, shared
// experts, Engram projections/norms/conv): a token always uses them, whatever ρ is. One routed expert
// beyond those costs `per_expert`: its SwiGLU weights and its router row, in every MoE layer.
struct SparseBudget {
  int64_t target_total = 0;  // P_tot (trained parameters, ParameterCounts::total())
  int64_t fixed = 0;         // the base with top_k routed experts and no tables (above)
  int64_t sparse = 0;        // P_sparse = P_tot − fixed
  int64_t per_expert = 0;    // one routed expert (SwiGLU + router row) summed over every MoE layer
};

// One point of the sweep: the base model with n_routed_experts and the Engram tables resized.
struct Allocation {
  double rho = 0.0;            // requested share of P_sparse for the inactive routed experts
  ModelConfig model;           // ready to train (validated)
  int64_t routed_experts = 0;  // E (top_k at ρ = 0; a multiple of the expert-parallel size)
  int64_t table_rows = 0;      // Σ over Engram layers of the table rows (0 without Engram)
  int64_t inactive_expert_params = 0;
  int64_t table_params = 0;
  int64_t total_params = 0;      // achieved P_tot = count_parameters(model).total()
  int64_t activated_params = 0;  // count_parameters(model).activated_per_token()
  double relative_error = 0.0;   // (total_params − target) / target; |·| ≤ 1% or allocate() fails
};

SparseBudget sparse_budget(const ModelConfig& base, int64_t target_total);

// ρ in [0, 1]. ρ = 1 removes the Engram modules; ρ = 0 keeps only the top_k routed experts. Errors
// (engram::Error) name ρ and the rule broken: a budget below the fixed parameters, an achieved total
// more than 1% off the target, an expert count the expert-parallel size cannot divide.
Allocation allocate(const ModelConfig& base, int64_t target_total, double rho, int expert_parallel = 1);

}  // namespace engram
