// Iso-parameter allocation (sweep/allocation.h): at every ρ the counts it reports equal the planner's
// for the returned config and the registry of a Model built from it; the achieved total is within 1%
// of the target; the expert count follows a hand-computed reference (whole experts, multiples of the
// expert-parallel size); ρ = 0 keeps top_k experts, ρ = 1 drops Engram; more ρ means more experts and
// fewer table rows; everything but the experts and table sizes is the base's; bad inputs name the rule.
#include <gtest/gtest.h>
#include <google/protobuf/util/message_differencer.h>

#include <cmath>
#include <string>

#include "model/model.h"
#include "model/plan.h"
#include "sweep/allocation.h"

namespace engram {
namespace {

// A small model shaped like configs/tiny.pbtxt's: a dense layer then MoE layers with a shared
// expert, Engram (2- and 3-grams) at two layers.
ModelConfig small_base() {
  ModelConfig m;
  m.set_vocab_size(64);
  m.set_d_model(16);
  m.set_n_heads(2);
  m.set_n_layers(3);
  m.set_n_dense_layers(1);
  m.set_d_ff(32);
  m.set_eos_id(2);
  auto* moe = m.mutable_moe();
  moe->set_n_routed_experts(4);
  moe->set_top_k(2);
  moe->set_expert_d_ff(8);
  moe->set_n_shared_experts(1);
  auto* g = m.mutable_engram();
  g->add_layers(1);
  g->add_layers(2);
  g->set_max_ngram(3);
  g->set_heads_per_ngram(2);
  g->set_head_dim(4);
  g->add_table_size(300);
  g->add_table_size(200);
  return m;
}

// One routed expert over both MoE layers, by hand: its SwiGLU (3·D·F_e) and its router row (D).
constexpr int64_t kPerExpert = 2 * (3 * 16 * 8 + 16);

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string error_of(const ModelConfig& base, int64_t target, double rho, int ep = 1) {
  try {
    allocate(base, target, rho, ep);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// The expert count by hand: inactive = round(ρ·P_sparse / per_expert), E to the nearest multiple of
// ep not below top_k (ties down).
int64_t reference_experts(int64_t sparse, double rho, int64_t top_k, int64_t ep) {
  const int64_t e = top_k + std::llround(rho * static_cast<double>(sparse) / kPerExpert);
  int64_t best = -1;
  for (int64_t m = ep; m <= e + ep; m += ep)
    if (m >= top_k && (best < 0 || std::abs(m - e) < std::abs(best - e))) best = m;
  return best;
}

// Registry sums of a built model: trained values, table values and rows, routed-expert values.
struct Built {
  int64_t trained = 0, tables = 0, rows = 0, routed = 0;
};

Built build(const ModelConfig& cfg) {
  const Model model(cfg);
  Built b;
  for (const Parameter* p : model.params().all()) {
    if (contains(p->name, ".moe.router.bias")) continue;  // balancing buffers, not trained
    b.trained += p->global_numel();
    if (contains(p->name, ".engram.table")) {
      b.tables += p->global_numel();
      b.rows += p->global_shape[0];
    }
    if (contains(p->name, ".moe.experts.")) b.routed += p->global_numel();
  }
  return b;
}

TEST(SweepAllocation, BudgetSplitsTheBaseByHand) {
  const ModelConfig base = small_base();
  const ParameterCounts c = count_parameters(base);
  const SparseBudget b = sparse_budget(base, 2 * c.total());
  EXPECT_EQ(b.per_expert, kPerExpert);
  EXPECT_EQ(b.fixed + (4 - 2) * kPerExpert + c.engram_tables, c.total());
  EXPECT_EQ(b.sparse, 2 * c.total() - b.fixed);
  EXPECT_EQ(b.target_total, 2 * c.total());
}

TEST(SweepAllocation, CountsEqualThePlannerAndTheBuiltModel) {
  const ModelConfig base = small_base();
  const int64_t target = 2 * count_parameters(base).total();
  const SparseBudget b = sparse_budget(base, target);
  for (double rho : {0.0, 0.3, 0.55, 0.8, 1.0}) {
    SCOPED_TRACE("rho " + std::to_string(rho));
    const Allocation a = allocate(base, target, rho);
    const ParameterCounts c = count_parameters(a.model);
    const Built built = build(a.model);
    EXPECT_EQ(a.rho, rho);
    EXPECT_EQ(a.total_params, c.total());
    EXPECT_EQ(a.total_params, built.trained);
    EXPECT_EQ(a.table_params, built.tables);
    EXPECT_EQ(a.table_rows, built.rows);
    EXPECT_EQ(a.inactive_expert_params, built.routed / a.routed_experts * (a.routed_experts - 2));
    EXPECT_EQ(a.activated_params, c.activated_per_token());
    EXPECT_EQ(a.model.moe().n_routed_experts(), a.routed_experts);
    EXPECT_LE(std::abs(a.total_params - target), target / 100);
    EXPECT_DOUBLE_EQ(a.relative_error, static_cast<double>(a.total_params - target) / target);
    if (rho < 1.0) {
      EXPECT_EQ(a.routed_experts, reference_experts(b.sparse, rho, 2, 1));
    }
  }
}

// The quickstart model itself at 1.5× its size (the worked example of docs/SWEEP.md).
TEST(SweepAllocation, QuickstartModelAtOneAndAHalfTimesItsSize) {
  const ModelConfig base = load_config(std::string(ENGRAM_SOURCE_DIR) + "/configs/tiny.pbtxt").model();
  const int64_t target = count_parameters(base).total() * 3 / 2;
  const Allocation a = allocate(base, target, 0.6);
  const Built built = build(a.model);
  EXPECT_EQ(a.total_params, built.trained);
  EXPECT_EQ(a.table_rows, built.rows);
  EXPECT_LE(std::abs(a.relative_error), 0.01);
}

TEST(SweepAllocation, RhoZeroKeepsTopKAndRhoOneDropsEngram) {
  const ModelConfig base = small_base();
  const int64_t target = 2 * count_parameters(base).total();
  const Allocation zero = allocate(base, target, 0.0, 2);
  EXPECT_EQ(zero.routed_experts, 2);
  EXPECT_EQ(zero.inactive_expert_params, 0);
  EXPECT_TRUE(has_engram(zero.model));

  const Allocation one = allocate(base, target, 1.0);
  EXPECT_FALSE(has_engram(one.model));
  EXPECT_EQ(one.table_rows, 0);
  EXPECT_EQ(one.table_params, 0);
  EXPECT_EQ(count_parameters(one.model).engram_projections, 0);
  // Without Engram the projections are no longer fixed: the experts take the whole remainder.
  const SparseBudget without = sparse_budget(one.model, target);
  EXPECT_EQ(one.routed_experts, 2 + std::llround(static_cast<double>(without.sparse) / kPerExpert));
  // A base without Engram can still be allocated at ρ = 1.
  EXPECT_EQ(allocate(one.model, target, 1.0).routed_experts, one.routed_experts);
}

TEST(SweepAllocation, MoreRhoMoreExpertsFewerRows) {
  const ModelConfig base = small_base();
  const int64_t target = 3 * count_parameters(base).total();
  Allocation previous = allocate(base, target, 0.0);
  for (int i = 1; i <= 10; ++i) {
    const Allocation a = allocate(base, target, i / 10.0);
    SCOPED_TRACE("rho " + std::to_string(a.rho));
    EXPECT_GE(a.routed_experts, previous.routed_experts);
    EXPECT_LE(a.table_rows, previous.table_rows);
    previous = a;
  }
}

TEST(SweepAllocation, ExpertsComeInMultiplesOfTheExpertParallelSize) {
  const ModelConfig base = small_base();
  const int64_t target = 3 * count_parameters(base).total();
  const SparseBudget b = sparse_budget(base, target);
  for (int ep : {1, 2, 4}) {
    for (double rho : {0.2, 0.5, 0.7}) {
      SCOPED_TRACE("ep " + std::to_string(ep) + " rho " + std::to_string(rho));
      const Allocation a = allocate(base, target, rho, ep);
      EXPECT_EQ(a.routed_experts % ep, 0);
      EXPECT_EQ(a.routed_experts, reference_experts(b.sparse, rho, 2, ep));
    }
  }
}

// Only n_routed_experts and the table sizes change, and the sizes keep the base's proportions.
TEST(SweepAllocation, KeepsEverythingElseOfTheBase) {
  const ModelConfig base = small_base();
  const Allocation a = allocate(base, 3 * count_parameters(base).total(), 0.4);
  const auto& sizes = a.model.engram().table_size();
  EXPECT_NEAR(static_cast<double>(sizes[0]) / sizes[1], 300.0 / 200.0, 300.0 / 200.0 * 2.0 / sizes[1]);
  EXPECT_NE(sizes[0], 300);
  ModelConfig restored = a.model;
  restored.mutable_moe()->set_n_routed_experts(4);
  restored.mutable_engram()->set_table_size(0, 300);
  restored.mutable_engram()->set_table_size(1, 200);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(restored, base));
}

TEST(SweepAllocation, RejectsBadInputs) {
  const ModelConfig base = small_base();
  const int64_t total = count_parameters(base).total();
  for (double rho : {-0.1, 1.5, std::nan("")}) {
    const std::string e = error_of(base, 2 * total, rho);
    EXPECT_TRUE(contains(e, "ρ") && contains(e, "[0, 1]")) << e;
  }
  const SparseBudget b = sparse_budget(base, 2 * total);
  const std::string below = error_of(base, b.fixed, 0.5);
  EXPECT_TRUE(contains(below, "total_params") && contains(below, std::to_string(b.fixed))) << below;

  // ρ = 0 keeps top_k = 2 experts, which 4 ranks of expert parallelism cannot split.
  const std::string ep = error_of(base, 2 * total, 0.0, 4);
  EXPECT_TRUE(contains(ep, "expert-parallel") && contains(ep, "top_k")) << ep;

  ModelConfig dense = base;
  dense.set_n_dense_layers(3);
  dense.clear_moe();
  EXPECT_TRUE(contains(error_of(dense, 2 * total, 0.5), "no MoE")) << error_of(dense, 2 * total, 0.5);
  ModelConfig no_engram = base;
  no_engram.clear_engram();
  EXPECT_TRUE(contains(error_of(no_engram, 2 * total, 0.5), "no Engram")) << error_of(no_engram, 2 * total, 0.5);

  // 20 whole experts plus 100 parameters: ρ = 20 experts' share leaves 100 parameters for tables,
  // less than the smallest valid ones (every table_size 2: 8 primes 2..19, Σ 77 rows of 4 values).
  const int64_t sparse = 20 * kPerExpert + 100;
  const double rho = 20.0 * kPerExpert / sparse;
  const std::string tiny_tables = error_of(base, b.fixed + sparse, rho);
  EXPECT_TRUE(contains(tiny_tables, "ρ = ") && contains(tiny_tables, "leaves 100 parameters") &&
              contains(tiny_tables, "308") && contains(tiny_tables, "table_size"))
      << tiny_tables;
}

// Whole experts are too coarse for a budget where half an expert is over 1% of the total.
TEST(SweepAllocation, RejectsABudgetCoarserThanOneExpert) {
  ModelConfig base = small_base();
  base.clear_engram();
  ModelConfig top_k_only = base;
  top_k_only.mutable_moe()->set_n_routed_experts(2);
  const int64_t fixed = count_parameters(top_k_only).total();
  EXPECT_GT(kPerExpert / 2, (fixed + 2 * kPerExpert) / 100);
  // 1.5 experts' worth of sparse budget rounds to 2 whole experts: off by half an expert.
  const std::string e = error_of(base, fixed + 3 * kPerExpert / 2, 1.0);
  EXPECT_TRUE(contains(e, "ρ = 1") && contains(e, "1%") && contains(e, "routed experts")) << e;
}

}  // namespace
}  // namespace engram
