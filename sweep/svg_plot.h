#pragma once
// The sweep's plot: validation loss against ρ as a standalone SVG document.
#include <string>
#include <vector>

#include "sweep/fit.h"

namespace engram {

struct SweepPlotPoint {
  double rho = 0;
  double mean_loss = 0;  // over seeds
  double std_loss = 0;   // sample standard deviation over seeds (0 with one seed): the error bar
  int seeds = 0;
};

// Points with error bars, the fitted parabola (when `fit` is given) and a marker at ρ*.
std::string render_sweep_svg(const std::vector<SweepPlotPoint>& points, const QuadraticFit* fit,
                             const std::string& title);

}  // namespace engram
