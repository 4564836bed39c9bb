// AdamW and lazy SparseAdam against the MODEL.md §6 update written out in double, and global-norm
// clipping as one factor applied to every group.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "optim/adamw.h"
#include "optim/grad_norm.h"
#include "optim/sparse_adam.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

config::OptimConfig test_config() {
  config::OptimConfig cfg;
  cfg.set_lr(1e-2f);
  cfg.set_weight_decay(0.1f);
  cfg.set_table_lr_mult(5.0f);
  return cfg;
}

// One element's Adam state, advanced by the formula in double.
struct RefAdam {
  double p = 0, m = 0, v = 0;
  void step(const config::OptimConfig& cfg, double lr, double wd, double grad, double grad_scale, int64_t t) {
    const double b1 = cfg.beta1(), b2 = cfg.beta2(), eps = cfg.eps();
    const double g = grad * grad_scale;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double m_hat = m / (1 - std::pow(b1, static_cast<double>(t)));
    const double v_hat = v / (1 - std::pow(b2, static_cast<double>(t)));
    p = p - lr * wd * p - lr * m_hat / (std::sqrt(v_hat) + eps);
  }
};

std::vector<RefAdam> ref_from(const Tensor& value) {
  std::vector<RefAdam> ref(value.numel());
  const float* p = value.data<float>();
  for (int64_t i = 0; i < value.numel(); ++i) ref[i].p = p[i];
  return ref;
}

// Compares value, m and v with ref[offset], ref[offset + 1], ... Tolerances: float32 kernel vs double
// reference; values are O(1), updates O(lr).
void expect_matches(const std::vector<RefAdam>& ref, int64_t offset, const Tensor& value, const Tensor& m,
                    const Tensor& v, const std::string& what) {
  std::vector<double> p_ref, m_ref, v_ref;
  for (int64_t i = offset; i < offset + value.numel(); ++i) {
    p_ref.push_back(ref[i].p);
    m_ref.push_back(ref[i].m);
    v_ref.push_back(ref[i].v);
  }
  expect_close(value, p_ref, 0.0, 2e-6, what + " value");
  expect_close(m, m_ref, 1e-6, 1e-6, what + " m");
  expect_close(v, v_ref, 1e-6, 1e-6, what + " v");
}

TEST(AdamW, TwoStepsMatchTheFormulaWithDecayOnlyOnDecayGroup) {
  std::mt19937 gen(7);
  const config::OptimConfig cfg = test_config();
  ParameterRegistry reg;
  Parameter& w = reg.add("w", {7, 13}, OptimGroup::Decay, {});
  Parameter& g = reg.add("g", {13}, OptimGroup::NoDecay, {});
  Parameter& still = reg.add("still", {3}, OptimGroup::NoDecay, {});  // zero grad
  Parameter& table = reg.add("table", {5, 3}, OptimGroup::SparseTable, {});
  Parameter& bias = reg.add("bias", {3}, OptimGroup::NotTrained, {});
  for (Parameter* p : reg.all()) fill_normal(p->value, gen);
  const Tensor still_before = still.value.clone(), table_before = table.value.clone();
  const Tensor bias_before = bias.value.clone();

  AdamW opt(reg, cfg);
  ASSERT_EQ(opt.state().size(), 3u);
  for (const char* name : {"w", "g", "still"}) {
    ASSERT_TRUE(opt.state().count(name)) << name;
    EXPECT_EQ(opt.state().at(name).m.shape(), reg.get(name).value.shape());
    EXPECT_EQ(kernels::sum_squares(opt.state().at(name).m) + kernels::sum_squares(opt.state().at(name).v), 0.0);
  }

  std::vector<RefAdam> ref_w = ref_from(w.value), ref_g = ref_from(g.value);
  const float lrs[2] = {1e-2f, 7e-3f}, scales[2] = {1.0f, 0.7f};
  for (int64_t t = 1; t <= 2; ++t) {
    fill_normal(w.grad, gen);
    fill_normal(g.grad, gen);
    for (int64_t i = 0; i < w.value.numel(); ++i)
      ref_w[i].step(cfg, lrs[t - 1], cfg.weight_decay(), w.grad.data<float>()[i], scales[t - 1], t);
    for (int64_t i = 0; i < g.value.numel(); ++i)
      ref_g[i].step(cfg, lrs[t - 1], 0.0, g.grad.data<float>()[i], scales[t - 1], t);
    opt.step(lrs[t - 1], scales[t - 1], t);
    const MomentState& sw = opt.state().at("w");
    const MomentState& sg = opt.state().at("g");
    expect_matches(ref_w, 0, w.value, sw.m, sw.v, "w step " + std::to_string(t));
    expect_matches(ref_g, 0, g.value, sg.m, sg.v, "g step " + std::to_string(t));
  }
  // No decay on NoDecay: a zero gradient leaves the value exactly as it was.
  EXPECT_TRUE(bitwise_equal(still.value, still_before));
  // AdamW touches neither tables nor NotTrained parameters.
  EXPECT_TRUE(bitwise_equal(table.value, table_before));
  EXPECT_TRUE(bitwise_equal(bias.value, bias_before));
}

TEST(SparseAdam, ListedRowsFollowTheFormulaOthersStayBitIdentical) {
  std::mt19937 gen(11);
  const config::OptimConfig cfg = test_config();
  const int64_t n_rows = 33, cols = 5;
  ParameterRegistry reg;
  Parameter& table = reg.add("table", {n_rows, cols}, OptimGroup::SparseTable, {});
  Parameter& dense = reg.add("dense", {3, 5}, OptimGroup::Decay, {});
  fill_normal(table.value, gen);
  fill_normal(dense.value, gen);
  fill_normal(dense.grad, gen);
  const Tensor dense_before = dense.value.clone();

  SparseAdam opt(reg, cfg);
  ASSERT_EQ(opt.state().size(), 1u);
  ASSERT_TRUE(opt.state().count("table"));
  std::vector<RefAdam> ref = ref_from(table.value);
  const double table_lr_base = 3e-3;

  const std::vector<std::vector<int64_t>> step_rows = {{0, 4, 5, 17, 32}, {4, 9, 32}};
  for (int64_t t = 1; t <= 2; ++t) {
    const std::vector<int64_t>& rows = step_rows[t - 1];
    const int64_t u = static_cast<int64_t>(rows.size());
    Tensor values = Tensor::empty({u, cols});
    fill_normal(values, gen);
    table.row_grads = {RowGrads{Tensor::from_vector(rows, {u}), values}};
    const MomentState& s = opt.state().at("table");
    const Tensor value_before = table.value.clone(), m_before = s.m.clone(), v_before = s.v.clone();

    for (int64_t k = 0; k < u; ++k)
      for (int64_t c = 0; c < cols; ++c)
        ref[rows[k] * cols + c].step(cfg, table_lr_base * cfg.table_lr_mult(), 0.0,
                                     values.data<float>()[k * cols + c], 1.0, t);
    opt.step(static_cast<float>(table_lr_base), 1.0f, t);

    std::vector<bool> listed(n_rows, false);
    for (int64_t r : rows) listed[r] = true;
    for (int64_t r = 0; r < n_rows; ++r) {
      const std::string what = "step " + std::to_string(t) + " row " + std::to_string(r);
      if (listed[r]) {
        expect_matches(ref, r * cols, table.value.slice(r, r + 1), s.m.slice(r, r + 1), s.v.slice(r, r + 1),
                       what);
      } else {
        // Lazy: at step 2, rows 0, 5 and 17 keep their step-1 moments and values exactly.
        EXPECT_TRUE(bitwise_equal(table.value.slice(r, r + 1), value_before.slice(r, r + 1))) << what;
        EXPECT_TRUE(bitwise_equal(s.m.slice(r, r + 1), m_before.slice(r, r + 1))) << what;
        EXPECT_TRUE(bitwise_equal(s.v.slice(r, r + 1), v_before.slice(r, r + 1))) << what;
      }
    }
  }
  // Row 0 was updated at step 1 only: its moments are the step-1 ones, not zero.
  EXPECT_NE(opt.state().at("table").m.data<float>()[0], 0.0f);
  EXPECT_TRUE(bitwise_equal(dense.value, dense_before));  // SparseAdam leaves dense parameters alone
}

TEST(SparseAdam, TableWithoutGradientIsUntouchedAndUnmergedListIsRejected) {
  std::mt19937 gen(3);
  ParameterRegistry reg;
  Parameter& table = reg.add("table", {7, 3}, OptimGroup::SparseTable, {});
  fill_normal(table.value, gen);
  const Tensor before = table.value.clone();
  SparseAdam opt(reg, test_config());
  opt.step(1e-2f, 1.0f, 1);
  EXPECT_TRUE(bitwise_equal(table.value, before));

  Tensor values = Tensor::empty({1, 3});
  fill_normal(values, gen);
  table.row_grads = {RowGrads{Tensor::from_vector<int64_t>({2}, {1}), values},
                     RowGrads{Tensor::from_vector<int64_t>({2}, {1}), values}};
  EXPECT_THROW(opt.step(1e-2f, 1.0f, 2), Error);
}

// Two registries with the same values: one keeps the raw gradients and steps with
// grad_scale = clip_factor, the other holds gradients pre-multiplied (in float) by that factor and
// steps with grad_scale = 1. The kernels form g = grad · grad_scale once in float, so both see the
// very same float g (fl(grad·f) vs fl(fl(grad·f)·1)) and every later operation matches: bitwise.
TEST(Clipping, OneFactorScalesDenseAndTableUpdatesAlike) {
  std::mt19937 gen(5);
  const config::OptimConfig cfg = test_config();
  auto build = [](ParameterRegistry& reg) {
    reg.add("w", {7, 3}, OptimGroup::Decay, {});
    reg.add("norm", {3}, OptimGroup::NoDecay, {});
    reg.add("table", {13, 3}, OptimGroup::SparseTable, {});
  };
  ParameterRegistry raw, prescaled;
  build(raw);
  build(prescaled);
  for (Parameter* p : raw.all()) {
    fill_normal(p->value, gen);
    prescaled.get(p->name).value.copy_from(p->value);
    if (p->grad.defined()) fill_normal(p->grad, gen, 0.0, 3.0);
  }
  Tensor a = Tensor::empty({3, 3}), b = Tensor::empty({2, 3});
  fill_normal(a, gen, 0.0, 3.0);
  fill_normal(b, gen, 0.0, 3.0);
  raw.get("table").row_grads = {RowGrads{Tensor::from_vector<int64_t>({1, 6, 12}, {3}), a},
                                RowGrads{Tensor::from_vector<int64_t>({0, 6}, {2}), b}};
  merge_row_grads(raw);
  const float factor = clip_factor(global_grad_norm(raw), cfg.grad_clip());
  ASSERT_LT(factor, 0.5f);  // the gradients are large enough that clipping really scales

  auto scaled = [factor](const Tensor& t) {
    Tensor out = t.clone();
    for (int64_t i = 0; i < out.numel(); ++i) out.data<float>()[i] *= factor;
    return out;
  };
  for (Parameter* p : raw.all()) {
    Parameter& q = prescaled.get(p->name);
    if (p->grad.defined()) q.grad.copy_from(scaled(p->grad));
    for (const RowGrads& r : p->row_grads) q.row_grads.push_back(RowGrads{r.rows.clone(), scaled(r.values)});
  }

  AdamW dense_raw(raw, cfg), dense_pre(prescaled, cfg);
  SparseAdam sparse_raw(raw, cfg), sparse_pre(prescaled, cfg);
  dense_raw.step(1e-2f, factor, 1);
  sparse_raw.step(1e-2f, factor, 1);
  dense_pre.step(1e-2f, 1.0f, 1);
  sparse_pre.step(1e-2f, 1.0f, 1);
  for (Parameter* p : raw.all()) {
    EXPECT_TRUE(bitwise_equal(p->value, prescaled.get(p->name).value)) << p->name;
    const MomentState& s_raw = p->group == OptimGroup::SparseTable ? sparse_raw.state().at(p->name)
                                                                   : dense_raw.state().at(p->name);
    const MomentState& s_pre = p->group == OptimGroup::SparseTable ? sparse_pre.state().at(p->name)
                                                                   : dense_pre.state().at(p->name);
    EXPECT_TRUE(bitwise_equal(s_raw.m, s_pre.m)) << p->name;
    EXPECT_TRUE(bitwise_equal(s_raw.v, s_pre.v)) << p->name;
  }
}

TEST(MomentOptimizer, MutableStateIsWhatTheNextStepReads) {
  // Checkpoint restore writes moments through mutable_state(); the next step must use them.
  std::mt19937 gen(9);
  const config::OptimConfig cfg = test_config();
  ParameterRegistry reg;
  Parameter& w = reg.add("w", {3, 7}, OptimGroup::Decay, {});
  fill_normal(w.value, gen);
  fill_normal(w.grad, gen);
  AdamW opt(reg, cfg);
  MomentState& s = opt.mutable_state().at("w");
  fill_normal(s.m, gen, 0.0, 0.1);
  fill_normal(s.v, gen, 0.0, 0.1);
  for (int64_t i = 0; i < s.v.numel(); ++i) s.v.data<float>()[i] = std::abs(s.v.data<float>()[i]);

  std::vector<RefAdam> ref = ref_from(w.value);
  for (int64_t i = 0; i < w.value.numel(); ++i) {
    ref[i].m = s.m.data<float>()[i];
    ref[i].v = s.v.data<float>()[i];
    ref[i].step(cfg, 1e-2, cfg.weight_decay(), w.grad.data<float>()[i], 1.0, 4);
  }
  opt.step(1e-2f, 1.0f, 4);
  expect_matches(ref, 0, w.value, s.m, s.v, "restored w");
}

}  // namespace
}  // namespace engram
