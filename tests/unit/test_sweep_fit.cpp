// The quadratic fit of the sweep (sweep/fit.h): an exact parabola comes back exactly; a noisy one
// gives the least-squares coefficients (residuals orthogonal to 1, ρ, ρ²) and its minimum within
// four delta-method standard errors; concave or monotone data put ρ* on the better end; residual_rms
// is the naive one; bad inputs are rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "sweep/fit.h"

namespace engram {
namespace {

double eval(const QuadraticFit& f, double r) { return f.a * r * r + f.b * r + f.c; }

double naive_rms(const QuadraticFit& f, const std::vector<double>& rho, const std::vector<double>& loss) {
  double s = 0;
  for (size_t i = 0; i < rho.size(); ++i) s += std::pow(loss[i] - eval(f, rho[i]), 2);
  return std::sqrt(s / rho.size());
}

std::string error_of(const std::vector<double>& rho, const std::vector<double>& loss) {
  try {
    fit_quadratic(rho, loss);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(SweepFit, RecoversAnExactParabola) {
  std::vector<double> rho, loss;
  for (double r : {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}) {
    rho.push_back(r);
    loss.push_back(1.5 * r * r - 2.1 * r + 3.2);
  }
  const QuadraticFit f = fit_quadratic(rho, loss);
  EXPECT_NEAR(f.a, 1.5, 1e-9);
  EXPECT_NEAR(f.b, -2.1, 1e-9);
  EXPECT_NEAR(f.c, 3.2, 1e-9);
  EXPECT_TRUE(f.interior_minimum);
  EXPECT_NEAR(f.rho_star, 0.7, 1e-9);  // −b / 2a
  EXPECT_NEAR(f.loss_star, 3.2 - 2.1 * 2.1 / 6.0, 1e-9);
  EXPECT_NEAR(f.residual_rms, 0.0, 1e-9);

  // Three points on a narrow, offset range, given out of order and with a repeat.
  const QuadraticFit g = fit_quadratic({0.9, 0.3, 0.5, 0.3}, {0.81 - 0.9, 0.09 - 0.3, 0.25 - 0.5, 0.09 - 0.3});
  EXPECT_NEAR(g.a, 1.0, 1e-9);
  EXPECT_NEAR(g.b, -1.0, 1e-9);
  EXPECT_NEAR(g.c, 0.0, 1e-9);
  EXPECT_NEAR(g.rho_star, 0.5, 1e-9);
}

// loss = 2(ρ − 0.7)² + 3 on ρ = 0, 0.1, …, 1 with 3 seeds each and Gaussian noise σ = 0.01.
TEST(SweepFit, FindsTheMinimumOfANoisyParabola) {
  const double a = 2.0, vertex = 0.7, floor_loss = 3.0, sigma = 0.01;
  std::mt19937 gen(12345);
  std::normal_distribution<double> noise(0.0, sigma);
  std::vector<double> rho, loss;
  for (int i = 0; i <= 10; ++i)
    for (int seed = 0; seed < 3; ++seed) {
      rho.push_back(i / 10.0);
      loss.push_back(a * std::pow(i / 10.0 - vertex, 2) + floor_loss + noise(gen));
    }
  const QuadraticFit f = fit_quadratic(rho, loss);

  // Least squares: the residuals are orthogonal to every basis function.
  for (int k = 0; k < 3; ++k) {
    double dot = 0;
    for (size_t i = 0; i < rho.size(); ++i) dot += (loss[i] - eval(f, rho[i])) * std::pow(rho[i], k);
    EXPECT_NEAR(dot, 0.0, 1e-9) << "power " << k;
  }
  EXPECT_NEAR(f.residual_rms, naive_rms(f, rho, loss), 1e-12);
  EXPECT_TRUE(f.interior_minimum);

  // Tolerance: the vertex −b/2a is a smooth function of (a, b), whose covariance is σ²(XᵀX)⁻¹
  // (X rows (ρ², ρ, 1)); its standard error by the delta method, gradient (b/2a², −1/2a) at the
  // true values, is about 0.0024 here. Four of them bound the error of any seed but 1 in ~16000.
  double m[3][3] = {};
  for (double r : rho) {
    const double x[3] = {r * r, r, 1.0};
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) m[i][j] += x[i] * x[j];
  }
  const double det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
                     m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
                     m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
  // The (a, b) block of the inverse, by cofactors.
  const double inv_aa = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / det;
  const double inv_bb = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / det;
  const double inv_ab = -(m[1][0] * m[2][2] - m[1][2] * m[2][0]) / det;
  const double b = -2 * a * vertex;
  const double ga = b / (2 * a * a), gb = -1 / (2 * a);
  const double se = sigma * std::sqrt(ga * ga * inv_aa + 2 * ga * gb * inv_ab + gb * gb * inv_bb);
  EXPECT_GT(se, 0.001);
  EXPECT_LT(se, 0.02);
  EXPECT_NEAR(f.rho_star, vertex, 4 * se);
  EXPECT_NEAR(f.loss_star, floor_loss, 4 * sigma);
  EXPECT_NEAR(f.loss_star, eval(f, f.rho_star), 1e-12);
}

TEST(SweepFit, ConcaveDataPutsTheOptimumOnTheBetterEnd) {
  std::vector<double> rho = {0.1, 0.3, 0.5, 0.7, 0.9}, loss;
  for (double r : rho) loss.push_back(-(r - 0.5) * (r - 0.5) + 3.0 + 0.1 * r);  // lower at ρ = 0.1
  const QuadraticFit f = fit_quadratic(rho, loss);
  EXPECT_LT(f.a, 0);
  EXPECT_FALSE(f.interior_minimum);
  EXPECT_DOUBLE_EQ(f.rho_star, 0.1);
  EXPECT_NEAR(f.loss_star, -0.16 + 3.01, 1e-9);
}

TEST(SweepFit, MonotoneDataPutsTheOptimumOnTheBetterEnd) {
  std::vector<double> rho = {0.0, 0.25, 0.5, 0.75, 1.0}, loss;
  for (double r : rho) loss.push_back(3.0 - r + 0.2 * r * r);  // convex, vertex at 2.5: decreasing on [0, 1]
  const QuadraticFit f = fit_quadratic(rho, loss);
  EXPECT_GT(f.a, 0);
  EXPECT_FALSE(f.interior_minimum);
  EXPECT_DOUBLE_EQ(f.rho_star, 1.0);
  EXPECT_NEAR(f.loss_star, 2.2, 1e-9);

  // Exactly linear data: a = 0, the lower end wins.
  const QuadraticFit g = fit_quadratic({0.0, 0.5, 1.0}, {1.0, 1.5, 2.0});
  EXPECT_NEAR(g.a, 0.0, 1e-12);
  EXPECT_FALSE(g.interior_minimum);
  EXPECT_DOUBLE_EQ(g.rho_star, 0.0);
}

TEST(SweepFit, RejectsBadInputs) {
  EXPECT_NE(error_of({0.0, 0.5, 1.0}, {1.0, 2.0}).find("3 ρ values but 2 losses"), std::string::npos);
  EXPECT_NE(error_of({0.0, 0.0, 1.0, 1.0}, {1, 2, 3, 4}).find("at least 3 distinct ρ values, got 2"),
            std::string::npos);
  EXPECT_NE(error_of({}, {}).find("at least 3 distinct"), std::string::npos);
  EXPECT_NE(error_of({0.0, 0.5, 1.0}, {1.0, std::nan(""), 2.0}).find("not finite"), std::string::npos);
  EXPECT_NE(error_of({0.0, INFINITY, 1.0}, {1.0, 1.0, 2.0}).find("not finite"), std::string::npos);
}

}  // namespace
}  // namespace engram
