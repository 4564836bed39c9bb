#include "sweep/allocation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "model/plan.h"
#include "runtime/error.h"

namespace engram {

namespace {

ModelConfig with_experts(const ModelConfig& m, int64_t experts) {
  ModelConfig out = m;
  out.mutable_moe()->set_n_routed_experts(static_cast<int32_t>(experts));
  return out;
}

ModelConfig without_engram(const ModelConfig& m) {
  ModelConfig out = m;
  out.clear_engram();
  return out;
}

// The base's table sizes scaled by one common factor (base proportions kept).
ModelConfig with_scaled_tables(const ModelConfig& base, double factor) {
  ModelConfig out = base;
  auto* g = out.mutable_engram();
  for (int i = 0; i < g->table_size_size(); ++i)
    g->set_table_size(i, std::llround(factor * static_cast<double>(base.engram().table_size(i))));
  return out;
}

int64_t table_params(const ModelConfig& m) { return count_parameters(m).engram_tables; }

// The scaled tables whose parameter count is closest to `remainder`. Table rows grow with the
// factor (each head takes the next unused prime above its size), so bisect on the factor between
// one that gives at most `remainder` and one that gives more, then keep the closer of the two.
// `lowest` is the smallest factor that keeps every table_size >= 2 (validate_model_config).
ModelConfig fit_tables(const ModelConfig& base, int64_t remainder, double lowest) {
  double lo = lowest, hi = lowest;
  while (table_params(with_scaled_tables(base, hi)) <= remainder) {
    lo = hi;
    hi *= 2;
  }
  for (int i = 0; i < 200 && hi - lo > lo * 1e-15; ++i) {
    const double mid = 0.5 * (lo + hi);
    (table_params(with_scaled_tables(base, mid)) <= remainder ? lo : hi) = mid;
  }
  const ModelConfig below = with_scaled_tables(base, lo), above = with_scaled_tables(base, hi);
  return remainder - table_params(below) <= table_params(above) - remainder ? below : above;
}

// E = top_k + inactive rounded to the nearest multiple of the expert-parallel size, never below
// top_k (ties go down, the smaller model).
int64_t round_experts(int64_t top_k, int64_t inactive, int64_t ep) {
  const int64_t e = top_k + inactive;
  const int64_t down = e / ep * ep, up = down == e ? e : down + ep;
  if (down < top_k) return up;
  return e - down <= up - e ? down : up;
}

}  // namespace

// Counts by difference, so the marginal parameters of one more routed expert include its router
// row (d_model per MoE layer), not only its MLP: the total is then exactly linear in E,
//   total(E) = fixed + (E − top_k)·per_expert + tables,
// and "fixed" is the base with only its top_k routed experts and no tables.
SparseBudget sparse_budget(const ModelConfig& base, int64_t target_total) {
  EG_CHECK(has_moe(base), "sweep: the base model has no MoE layers (model.n_dense_layers = ", base.n_dense_layers(),
           " = model.n_layers): ρ splits the sparse budget between routed experts and Engram tables, so it needs "
           "routed experts");
  const int64_t top_k = base.moe().top_k(), experts = base.moe().n_routed_experts();
  const ParameterCounts counts = count_parameters(base);
  const int64_t at_top_k = count_parameters(with_experts(base, top_k)).total();
  SparseBudget b;
  b.target_total = target_total;
  b.per_expert = count_parameters(with_experts(base, top_k + 1)).total() - at_top_k;
  EG_ASSERT(counts.routed_experts_active % top_k == 0 && b.per_expert > counts.routed_experts_active / top_k,
            "per_expert ", b.per_expert, " vs active ", counts.routed_experts_active);
  EG_ASSERT(counts.total() - at_top_k == (experts - top_k) * b.per_expert, "the total is not linear in E");
  b.fixed = at_top_k - counts.engram_tables;
  b.sparse = target_total - b.fixed;
  EG_CHECK(b.sparse > 0, "sweep: total_params = ", target_total, " must exceed the ", b.fixed,
           " fixed parameters of the base model (everything but the inactive routed experts and the Engram "
           "tables), leaving a sparse budget to allocate");
  return b;
}

Allocation allocate(const ModelConfig& base, int64_t target_total, double rho, int expert_parallel) {
  EG_CHECK(std::isfinite(rho) && rho >= 0.0 && rho <= 1.0, "sweep: ρ = ", rho, " must be in [0, 1]");
  EG_CHECK(expert_parallel >= 1, "sweep: expert-parallel size = ", expert_parallel, " must be >= 1");
  EG_CHECK(rho == 1.0 || has_engram(base), "sweep: ρ = ", rho,
           " gives Engram tables a share of the budget, but the base model has no Engram (model.engram.layers is "
           "empty)");
  // ρ = 1 has no Engram modules at all, so their projections stop being fixed parameters.
  const ModelConfig shape = rho == 1.0 ? without_engram(base) : base;
  const SparseBudget b = sparse_budget(shape, target_total);
  const int64_t top_k = shape.moe().top_k(), ep = expert_parallel;

  int64_t experts = top_k;
  if (rho == 0.0) {
    EG_CHECK(top_k % ep == 0, "sweep: ρ = 0 keeps exactly model.moe.top_k = ", top_k,
             " routed experts, which the expert-parallel size ", ep, " does not divide");
  } else {
    const auto inactive = static_cast<int64_t>(std::llround(rho * static_cast<double>(b.sparse) /
                                                            static_cast<double>(b.per_expert)));
    experts = round_experts(top_k, inactive, ep);
  }
  EG_CHECK(experts <= INT32_MAX, "sweep: ρ = ", rho, " asks for ", experts,
           " routed experts, more than model.moe.n_routed_experts can hold");
  ModelConfig model = with_experts(shape, experts);

  if (rho < 1.0) {
    const int64_t remainder = b.sparse - (experts - top_k) * b.per_expert;
    const auto& sizes = base.engram().table_size();
    const double smallest = static_cast<double>(*std::min_element(sizes.begin(), sizes.end()));
    const double lowest = 2.0 / smallest;  // every llround(factor · size) >= 2
    const int64_t minimum = table_params(with_scaled_tables(model, lowest));
    EG_CHECK(remainder >= minimum, "sweep: ρ = ", rho, " leaves ", remainder, " parameters for the Engram tables after ",
             experts, " routed experts (rounded to whole experts of ", b.per_expert,
             " parameters and to multiples of the expert-parallel size ", ep,
             "), fewer than the smallest valid tables (", minimum,
             ": every model.engram.table_size must be >= 2); raise total_params or pick another ρ");
    model = fit_tables(model, remainder, lowest);
  }
  validate_model_config(model);

  const ParameterCounts c = count_parameters(model);
  const std::vector<int64_t> rows = engram_table_rows(model);
  Allocation a;
  a.rho = rho;
  a.routed_experts = experts;
  a.table_rows = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  a.inactive_expert_params = c.routed_experts_inactive;
  a.table_params = c.engram_tables;
  a.total_params = c.total();
  a.activated_params = c.activated_per_token();
  a.relative_error = static_cast<double>(a.total_params - target_total) / static_cast<double>(target_total);
  EG_CHECK(std::abs(a.relative_error) <= 0.01, "sweep: ρ = ", rho, ": target total_params = ", target_total,
           " but the allocation reaches ", a.total_params, " (", a.relative_error * 100,
           "% off, more than 1%): ", experts, " routed experts of ", b.per_expert,
           " parameters each (whole experts, in multiples of the expert-parallel size ", ep, ")",
           rho == 1.0 ? " and no tables to take up the rest: the expert granularity is coarser than 1% of the budget"
                      : " and tables whose prime-sized rows cannot take up the rest",
           "; raise total_params or use smaller experts");
  a.model = std::move(model);
  return a;
}

}  // namespace engram
