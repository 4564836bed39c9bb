// The Engram gate: forward against a naive double implementation, backward by finite differences,
// and the zero-gradient region of the clamped signed square root.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/engram_gate.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

struct GateRef {
  std::vector<double> score, alpha, u;
};

// s = <q, k>/√D, α = σ(sign(s)·sqrt(max(|s|, 1e-6))), u = α·v; in double.
GateRef naive_gate(const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                   int64_t n, int64_t d) {
  GateRef r{std::vector<double>(n), std::vector<double>(n), std::vector<double>(n * d)};
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0.0;
    for (int64_t c = 0; c < d; ++c) dot += q[i * d + c] * k[i * d + c];
    const double s = dot / std::sqrt(static_cast<double>(d));
    const double sign = s > 0 ? 1.0 : (s < 0 ? -1.0 : 0.0);
    const double z = sign * std::sqrt(std::max(std::fabs(s), 1e-6));
    r.score[i] = s;
    r.alpha[i] = 1.0 / (1.0 + std::exp(-z));
    for (int64_t c = 0; c < d; ++c) r.u[i * d + c] = r.alpha[i] * v[i * d + c];
  }
  return r;
}

struct Gate {
  Tensor score, alpha, u;
};
Gate run_forward(const Tensor& q, const Tensor& k, const Tensor& v) {
  Gate g{nan_tensor({q.rows()}), nan_tensor({q.rows()}), nan_tensor(q.shape())};
  kernels::engram_gate_forward(q, k, v, g.score, g.alpha, g.u);
  return g;
}

TEST(KernelEngramGate, ForwardMatchesNaive) {
  std::mt19937 gen(1);
  const int64_t sizes[][2] = {{1, 1}, {7, 13}, {33, 3}, {3, 64}};
  for (const auto& s : sizes) {
    const int64_t n = s[0], d = s[1];
    Tensor q = random_uniform({n, d}, gen), k = random_uniform({n, d}, gen), v = random_uniform({n, d}, gen);
    if (n > 1) std::fill_n(q.data<float>(), d, 0.0f);  // row 0: s = 0 exactly, α = σ(0) = 1/2
    const Gate got = run_forward(q, k, v);
    const GateRef want = naive_gate(to_double(q), to_double(k), to_double(v), n, d);
    expect_close(got.score, want.score, 0.0, 1e-6, "score");
    expect_close(got.alpha, want.alpha, 0.0, 1e-6, "alpha");
    expect_close(got.u, want.u, 0.0, 1e-6, "u");
    if (n > 1) {
      EXPECT_EQ(got.alpha.data<float>()[0], 0.5f);
    }
  }
}

TEST(KernelEngramGate, BackwardMatchesFiniteDifferences) {
  std::mt19937 gen(2);
  const int64_t n = 13, d = 7;
  Tensor q = random_uniform({n, d}, gen), k = random_uniform({n, d}, gen), v = random_uniform({n, d}, gen);
  // Keep every |s| well away from 0 so the finite-difference step stays inside one smooth branch.
  const Gate first = run_forward(q, k, v);
  for (int64_t i = 0; i < n; ++i) {
    if (std::fabs(first.score.data<float>()[i]) < 0.05f)
      for (int64_t c = 0; c < d; ++c) k.data<float>()[i * d + c] = q.data<float>()[i * d + c];  // s = |q|²/√D
  }
  const Gate fwd = run_forward(q, k, v);
  for (int64_t i = 0; i < n; ++i) ASSERT_GT(std::fabs(fwd.score.data<float>()[i]), 0.05f);
  Tensor du = random_uniform({n, d}, gen);
  Tensor dq = nan_tensor({n, d}), dk = nan_tensor({n, d}), dv = nan_tensor({n, d});
  kernels::engram_gate_backward(du, q, k, v, fwd.score, fwd.alpha, dq, dk, dv);

  // L = Σ du ⊙ u(q, k, v), central differences on the naive forward.
  const std::vector<double> g = to_double(du);
  std::vector<double> qd = to_double(q), kd = to_double(k), vd = to_double(v);
  auto loss = [&] { return dot(g, naive_gate(qd, kd, vd, n, d).u); };
  const double h = 1e-5;
  expect_close(dq, numeric_gradient(qd, loss, h), 0.0, 2e-5, "dq");
  expect_close(dk, numeric_gradient(kd, loss, h), 0.0, 2e-5, "dk");
  expect_close(dv, numeric_gradient(vd, loss, h), 0.0, 2e-5, "dv");
}

TEST(KernelEngramGate, ClampedScoresHaveNoScoreGradient) {
  // Row 0: q = 0 (s = 0). Row 1: |s| ≈ 1e-8 <= 1e-6. Row 2: a normal score, for contrast.
  const int64_t d = 3;
  Tensor q = Tensor::from_vector<float>({0.0f, 0.0f, 0.0f, 1e-4f, 0.0f, 0.0f, 0.5f, -0.25f, 1.0f}, {3, d});
  Tensor k = Tensor::from_vector<float>({0.3f, -0.2f, 0.1f, 1.7e-4f, 0.4f, 0.9f, 0.5f, 0.5f, 0.5f}, {3, d});
  std::mt19937 gen(3);
  Tensor v = random_uniform({3, d}, gen), du = random_uniform({3, d}, gen);
  const Gate fwd = run_forward(q, k, v);
  ASSERT_LE(std::fabs(fwd.score.data<float>()[1]), 1e-6f);
  Tensor dq = nan_tensor({3, d}), dk = nan_tensor({3, d}), dv = nan_tensor({3, d});
  kernels::engram_gate_backward(du, q, k, v, fwd.score, fwd.alpha, dq, dk, dv);
  for (int64_t i = 0; i < 2 * d; ++i) {
    EXPECT_EQ(dq.data<float>()[i], 0.0f) << i;
    EXPECT_EQ(dk.data<float>()[i], 0.0f) << i;
  }
  for (int64_t i = 0; i < 3 * d; ++i)
    EXPECT_FLOAT_EQ(dv.data<float>()[i], fwd.alpha.data<float>()[i / d] * du.data<float>()[i]);
  double row2 = 0.0;
  for (int64_t c = 0; c < d; ++c) row2 += std::fabs(dq.data<float>()[2 * d + c]);
  EXPECT_GT(row2, 0.0);
}

}  // namespace
}  // namespace engram
