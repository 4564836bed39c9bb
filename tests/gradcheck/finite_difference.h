#pragma once
// The finite-difference gradient checker of every gradcheck. A backward is checked on a scalar
// objective, e.g. L = Σ dy ⊙ forward(...) (+ any loss terms the module adds itself), summed in
// double so that the difference quotient is limited by the float32 forward, not by the sum.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <source_location>
#include <string>
#include <vector>

#include "runtime/parameters.h"
#include "runtime/tensor.h"
#include "tests/test_util.h"

namespace engram::test {

using testing_util::fill_normal;
using testing_util::random_normal;

inline void fill_uniform(Tensor& t, std::mt19937& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(dist(rng));
}


// Σ a ⊙ b in double.
inline double dot(const Tensor& a, const Tensor& b) {
  EG_ASSERT(a.numel() == b.numel(), "dot of ", a.describe(), " and ", b.describe());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  double sum = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) sum += static_cast<double>(pa[i]) * pb[i];
  return sum;
}

// What backward ADDED to the parameters' gradients (they accumulate), against a snapshot taken
// before it: the dense grad minus the snapshot, or for a row-sparse table the row grads appended
// since, summed per row into a dense [rows, width] vector.
class GradientSnapshot {
 public:
  explicit GradientSnapshot(const ParameterRegistry& params) {
    for (const Parameter* p : params.all()) {
      before_[p] = {p->grad.defined() ? p->grad.to_vector<float>() : std::vector<float>{},
                    p->row_grads.size()};
    }
  }

  std::vector<float> added(const Parameter& p) const {
    const Before& before = before_.at(&p);
    if (p.grad.defined()) {
      std::vector<float> g = p.grad.to_vector<float>();
      for (size_t i = 0; i < g.size(); ++i) g[i] -= before.dense[i];
      return g;
    }
    std::vector<float> g(p.value.numel(), 0.0f);
    const int64_t cols = p.value.cols();
    for (size_t entry = before.row_grad_entries; entry < p.row_grads.size(); ++entry) {
      const RowGrads& rg = p.row_grads[entry];
      const int64_t* rows = rg.rows.data<int64_t>();
      const float* values = rg.values.data<float>();
      for (int64_t u = 0; u < rg.rows.numel(); ++u)
        for (int64_t c = 0; c < cols; ++c) g[rows[u] * cols + c] += values[u * cols + c];
    }
    return g;
  }

 private:
  struct Before {
    std::vector<float> dense;
    size_t row_grad_entries = 0;
  };
  std::map<const Parameter*, Before> before_;
};

// One evaluation of the objective, and the guard against discrete decisions: `branch` names the
// choices the forward made (e.g. a hash of the MoE top-k selection); a difference quotient is only
// meaningful when every evaluation of it took the same branch and none was ambiguous (too close to
// a switch to tell in float32). An objective without discrete choices leaves both as they are.
struct Eval {
  double loss = 0.0;
  uint64_t branch = 0;
  bool ambiguous = false;
};

enum class Stencil {
  Central,    // (L(v+h) − L(v−h)) / 2h, O(h²) truncation
  FivePoint,  // (8·(L(v+h) − L(v−h)) − (L(v+2h) − L(v−2h))) / 12h, O(h⁴) truncation: allows a step
              // large enough to keep float32 rounding noise small even where the function bends
              // sharply (the Engram gate's signed square root near 0)
};

struct FdOptions {
  double eps = 3e-3;
  double rtol = 1e-2;
  double atol = 1e-3;
  int samples = 20;  // elements perturbed per tensor (all of them when the tensor is smaller)
  Stencil stencil = Stencil::FivePoint;
  // Also evaluate the unperturbed objective and skip an element whose one-sided differences between
  // neighbouring stencil points disagree by more than the tolerance: a kink (e.g. the cusp of the
  // Engram gate's sqrt(|s|) at s = 0) lies within the stencil. For a smooth function they differ by
  // O(eps). Like the branch guard, it never looks at the analytic gradient.
  bool kink_guard = false;
};

struct FdResult {
  int checked = 0;
  int skipped = 0;            // a branch switch or a kink within the stencil
  double max_abs_grad = 0.0;  // largest |analytic| among the checked elements

  int attempted() const { return checked + skipped; }
  FdResult& operator+=(const FdResult& other) {
    checked += other.checked;
    skipped += other.skipped;
    max_abs_grad = std::max(max_abs_grad, other.max_abs_grad);
    return *this;
  }
};

// Compares analytic[i] with the difference quotient of opt.stencil for a random subset of the
// elements of `value` (modified in place and restored bit-exactly), skipping those the guards reject.
// A mismatch names `what`, the element and the caller's line.
inline FdResult check_gradient(const std::string& what, Tensor value, const std::vector<float>& analytic,
                               const std::function<Eval()>& evaluate, std::mt19937& rng,
                               const FdOptions& opt = {},
                               std::source_location where = std::source_location::current()) {
  EG_ASSERT(static_cast<int64_t>(analytic.size()) == value.numel(), what, ": gradient size");
  const testing::ScopedTrace trace(where.file_name(), static_cast<int>(where.line()), what);
  std::vector<int64_t> order(value.numel());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(std::min<size_t>(order.size(), opt.samples));

  // Where the objective is evaluated, in multiples k of eps, ascending; 0 only for the kink guard.
  // at[k + 2] is the value float32 really took at step k, e[k + 2] the objective there.
  std::vector<int> steps =
      opt.stencil == Stencil::Central ? std::vector<int>{-1, 1} : std::vector<int>{-2, -1, 1, 2};
  if (opt.kink_guard) steps.insert(steps.begin() + steps.size() / 2, 0);

  FdResult result;
  float* p = value.data<float>();
  for (int64_t i : order) {
    const float saved = p[i];
    float at[5];
    Eval e[5];
    for (int k : steps) {
      at[k + 2] = static_cast<float>(saved + k * opt.eps);
      p[i] = at[k + 2];
      e[k + 2] = evaluate();
    }
    p[i] = saved;

    const double h = (static_cast<double>(at[3]) - at[1]) / 2.0;  // the step float32 really took
    const double fd = opt.stencil == Stencil::Central
                          ? (e[3].loss - e[1].loss) / (2.0 * h)
                          : (8.0 * (e[3].loss - e[1].loss) - (e[4].loss - e[0].loss)) / (12.0 * h);
    auto slope = [&](int a, int b) {
      return (e[b + 2].loss - e[a + 2].loss) / (static_cast<double>(at[b + 2]) - at[a + 2]);
    };
    bool comparable = true;
    for (int k : steps) comparable = comparable && !e[k + 2].ambiguous && e[k + 2].branch == e[3].branch;
    for (size_t s = 0; opt.kink_guard && s + 2 < steps.size(); ++s) {
      const double kink = std::abs(slope(steps[s + 1], steps[s + 2]) - slope(steps[s], steps[s + 1]));
      comparable = comparable && kink <= opt.atol + opt.rtol * std::abs(fd);
    }
    if (!comparable) {
      ++result.skipped;
      continue;
    }
    const double an = analytic[i];
    EXPECT_NEAR(an, fd, opt.atol + opt.rtol * std::max(std::abs(an), std::abs(fd)))
        << what << " element " << i << " of " << value.numel();
    ++result.checked;
    result.max_abs_grad = std::max(result.max_abs_grad, std::abs(an));
  }
  return result;
}

}  // namespace engram::test
