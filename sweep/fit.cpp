#include "sweep/fit.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <set>
#include <utility>

#include "runtime/error.h"

namespace engram {

namespace {

// Solves the 3×3 system m·x = r by Gaussian elimination with partial pivoting.
std::array<double, 3> solve3(std::array<std::array<double, 3>, 3> m, std::array<double, 3> r) {
  for (int col = 0; col < 3; ++col) {
    int pivot = col;
    for (int row = col + 1; row < 3; ++row)
      if (std::abs(m[row][col]) > std::abs(m[pivot][col])) pivot = row;
    std::swap(m[col], m[pivot]);
    std::swap(r[col], r[pivot]);
    EG_ASSERT(m[col][col] != 0.0, "singular normal equations");
    for (int row = col + 1; row < 3; ++row) {
      const double f = m[row][col] / m[col][col];
      for (int k = col; k < 3; ++k) m[row][k] -= f * m[col][k];
      r[row] -= f * r[col];
    }
  }
  std::array<double, 3> x{};
  for (int row = 2; row >= 0; --row) {
    double s = r[row];
    for (int k = row + 1; k < 3; ++k) s -= m[row][k] * x[k];
    x[row] = s / m[row][row];
  }
  return x;
}

}  // namespace

QuadraticFit fit_quadratic(const std::vector<double>& rho, const std::vector<double>& loss) {
  EG_CHECK(rho.size() == loss.size(), "quadratic fit: ", rho.size(), " ρ values but ", loss.size(), " losses");
  for (size_t i = 0; i < rho.size(); ++i)
    EG_CHECK(std::isfinite(rho[i]) && std::isfinite(loss[i]), "quadratic fit: point ", i, " (ρ = ", rho[i],
             ", loss = ", loss[i], ") is not finite");
  const std::set<double> distinct(rho.begin(), rho.end());
  EG_CHECK(distinct.size() >= 3, "quadratic fit: needs at least 3 distinct ρ values, got ", distinct.size());

  // Fit on x = (ρ − mid)/half ∈ [−1, 1] so the normal equations stay well conditioned.
  const double lo = *distinct.begin(), hi = *distinct.rbegin();
  const double mid = 0.5 * (lo + hi), half = 0.5 * (hi - lo);
  std::array<std::array<double, 3>, 3> normal{};  // Σ x^(i+j), unknowns (α, β, γ) of α·x² + β·x + γ
  std::array<double, 3> rhs{};
  for (size_t i = 0; i < rho.size(); ++i) {
    const double x = (rho[i] - mid) / half;
    const std::array<double, 3> basis{x * x, x, 1.0};
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) normal[r][c] += basis[r] * basis[c];
      rhs[r] += basis[r] * loss[i];
    }
  }
  const auto [alpha, beta, gamma] = solve3(normal, rhs);

  QuadraticFit f;
  // Back to ρ: α·((ρ − mid)/half)² + β·(ρ − mid)/half + γ.
  f.a = alpha / (half * half);
  f.b = beta / half - 2.0 * alpha * mid / (half * half);
  f.c = alpha * mid * mid / (half * half) - beta * mid / half + gamma;
  auto at = [&](double r) {
    const double x = (r - mid) / half;
    return (alpha * x + beta) * x + gamma;
  };
  const double vertex = alpha > 0 ? mid - half * beta / (2.0 * alpha) : 0.0;
  f.interior_minimum = alpha > 0 && vertex > lo && vertex < hi;
  // No interior minimum: the better end (ties go to the smaller ρ).
  f.rho_star = f.interior_minimum ? vertex : (at(lo) <= at(hi) ? lo : hi);
  f.loss_star = at(f.rho_star);
  double squares = 0;
  for (size_t i = 0; i < rho.size(); ++i) squares += (loss[i] - at(rho[i])) * (loss[i] - at(rho[i]));
  f.residual_rms = std::sqrt(squares / static_cast<double>(rho.size()));
  return f;
}

}  // namespace engram
