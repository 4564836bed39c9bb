#pragma once
// Least-squares quadratic fit of validation loss against ρ (docs/SWEEP.md).
#include <vector>

namespace engram {

struct QuadraticFit {
  double a = 0, b = 0, c = 0;    // loss ≈ a·ρ² + b·ρ + c, every (ρ, loss) pair one observation
  double rho_star = 0;           // the fitted minimum over [min ρ, max ρ]
  double loss_star = 0;          // the fit at rho_star
  double residual_rms = 0;       // sqrt(mean of squared residuals)
  bool interior_minimum = false; // a > 0 and the vertex −b/2a lies strictly inside the range
};

// Needs at least 3 distinct ρ values (engram::Error otherwise).
QuadraticFit fit_quadratic(const std::vector<double>& rho, const std::vector<double>& loss);

}  // namespace engram
