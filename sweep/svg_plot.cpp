#include "sweep/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "runtime/error.h"

namespace engram {

namespace {

// Canvas and plot area (pixels). The x axis spans [0, 1] widened to every ρ; the y axis every
// mean ± std and the fitted curve, padded, with round ticks.
constexpr double kWidth = 720, kHeight = 480;
constexpr double kLeft = 80, kRight = 30, kTop = 50, kBottom = 70;
constexpr double kPlotW = kWidth - kLeft - kRight, kPlotH = kHeight - kTop - kBottom;
constexpr int kCurveSamples = 101;

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += ch;
    }
  }
  return out;
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string px(double v) { return fixed(v, 2); }

struct Range {
  double lo, hi;
};

// A tick step of 1, 2 or 5 × 10^k giving about five intervals over the range.
double tick_step(const Range& r) {
  const double raw = (r.hi - r.lo) / 5;
  const double base = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (m * base >= raw) return m * base;
  return 10 * base;
}

int tick_decimals(double step) { return std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9))); }

double quadratic(const QuadraticFit& f, double r) { return (f.a * r + f.b) * r + f.c; }

}  // namespace

std::string render_sweep_svg(const std::vector<SweepPlotPoint>& points, const QuadraticFit* fit,
                             const std::string& title) {
  EG_CHECK(!points.empty(), "sweep plot: no points to plot");
  for (const SweepPlotPoint& p : points)
    EG_CHECK(std::isfinite(p.rho) && std::isfinite(p.mean_loss) && std::isfinite(p.std_loss) && p.std_loss >= 0,
             "sweep plot: point ρ = ", p.rho, " has loss ", p.mean_loss, " ± ", p.std_loss,
             " (expected finite values and std >= 0)");

  Range x{0.0, 1.0}, y{points[0].mean_loss, points[0].mean_loss};
  double rho_lo = points[0].rho, rho_hi = points[0].rho;
  for (const SweepPlotPoint& p : points) {
    x = {std::min(x.lo, p.rho), std::max(x.hi, p.rho)};
    rho_lo = std::min(rho_lo, p.rho);
    rho_hi = std::max(rho_hi, p.rho);
    y = {std::min(y.lo, p.mean_loss - p.std_loss), std::max(y.hi, p.mean_loss + p.std_loss)};
  }
  std::vector<std::pair<double, double>> curve;  // (ρ, fitted loss) over the measured ρ range
  if (fit) {
    for (int i = 0; i < kCurveSamples; ++i) {
      const double r = rho_lo + (rho_hi - rho_lo) * i / (kCurveSamples - 1);
      curve.emplace_back(r, quadratic(*fit, r));
    }
    curve.emplace_back(fit->rho_star, fit->loss_star);
    for (const auto& [r, l] : curve) y = {std::min(y.lo, l), std::max(y.hi, l)};
    curve.pop_back();
  }
  const double pad = y.hi > y.lo ? 0.08 * (y.hi - y.lo) : std::max(0.01 * std::abs(y.lo), 1e-3);
  y = {y.lo - pad, y.hi + pad};

  auto sx = [&](double r) { return kLeft + (r - x.lo) / (x.hi - x.lo) * kPlotW; };
  auto sy = [&](double l) { return kTop + (y.hi - l) / (y.hi - y.lo) * kPlotH; };

  std::string s;
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + px(kWidth) + "\" height=\"" + px(kHeight) +
       "\" viewBox=\"0 0 " + px(kWidth) + " " + px(kHeight) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text class=\"title\" x=\"" + px(kWidth / 2) + "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" +
       xml_escape(title) + "</text>\n";
  s += "<rect class=\"plot-area\" x=\"" + px(kLeft) + "\" y=\"" + px(kTop) + "\" width=\"" + px(kPlotW) +
       "\" height=\"" + px(kPlotH) + "\" fill=\"none\" stroke=\"black\"/>\n";

  // Ticks, labels and light grid lines on both axes.
  for (const auto& [range, is_x] : {std::pair{x, true}, std::pair{y, false}}) {
    const double step = tick_step(range);
    const int decimals = tick_decimals(step);
    for (double t = std::ceil(range.lo / step - 1e-9) * step; t <= range.hi + step * 1e-9; t += step) {
      const std::string label = fixed(std::abs(t) < step * 1e-9 ? 0.0 : t, decimals);
      if (is_x) {
        const std::string at = px(sx(t));
        s += "<line class=\"tick\" x1=\"" + at + "\" y1=\"" + px(kTop) + "\" x2=\"" + at + "\" y2=\"" +
             px(kTop + kPlotH + 5) + "\" stroke=\"#ddd\"/>\n";
        s += "<text class=\"tick-label\" x=\"" + at + "\" y=\"" + px(kTop + kPlotH + 20) +
             "\" text-anchor=\"middle\">" + label + "</text>\n";
      } else {
        const std::string at = px(sy(t));
        s += "<line class=\"tick\" x1=\"" + px(kLeft - 5) + "\" y1=\"" + at + "\" x2=\"" + px(kLeft + kPlotW) +
             "\" y2=\"" + at + "\" stroke=\"#ddd\"/>\n";
        s += "<text class=\"tick-label\" x=\"" + px(kLeft - 8) + "\" y=\"" + px(sy(t) + 4) +
             "\" text-anchor=\"end\">" + label + "</text>\n";
      }
    }
  }
  s += "<text class=\"axis-label\" x=\"" + px(kLeft + kPlotW / 2) + "\" y=\"" + px(kHeight - 20) +
       "\" text-anchor=\"middle\">" + xml_escape("ρ (share of sparse parameters in routed experts)") + "</text>\n";
  s += "<text class=\"axis-label\" transform=\"translate(20 " + px(kTop + kPlotH / 2) +
       ") rotate(-90)\" text-anchor=\"middle\">validation loss</text>\n";

  if (fit) {
    std::string pts;
    for (const auto& [r, l] : curve) pts += (pts.empty() ? "" : " ") + px(sx(r)) + "," + px(sy(l));
    s += "<polyline class=\"fit\" points=\"" + pts + "\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n";
    const double rx = sx(fit->rho_star), ry = sy(fit->loss_star);
    s += "<line class=\"rho-star\" x1=\"" + px(rx) + "\" y1=\"" + px(kTop) + "\" x2=\"" + px(rx) + "\" y2=\"" +
         px(kTop + kPlotH) + "\" stroke=\"#d62728\" stroke-dasharray=\"5,4\"/>\n";
    s += "<path class=\"rho-star-marker\" d=\"M " + px(rx) + " " + px(ry - 7) + " L " + px(rx + 7) + " " + px(ry) +
         " L " + px(rx) + " " + px(ry + 7) + " L " + px(rx - 7) + " " + px(ry) + " Z\" fill=\"#d62728\"/>\n";
  }
  for (const SweepPlotPoint& p : points) {
    const std::string cx = px(sx(p.rho));
    if (p.std_loss > 0) {
      const std::string top = px(sy(p.mean_loss + p.std_loss)), bottom = px(sy(p.mean_loss - p.std_loss));
      const std::string left = px(sx(p.rho) - 4), right = px(sx(p.rho) + 4);
      s += "<path class=\"error-bar\" d=\"M " + cx + " " + top + " V " + bottom + " M " + left + " " + top + " H " +
           right + " M " + left + " " + bottom + " H " + right + "\" stroke=\"black\" fill=\"none\"/>\n";
    }
    s += "<circle class=\"point\" cx=\"" + cx + "\" cy=\"" + px(sy(p.mean_loss)) + "\" r=\"4\" fill=\"black\"/>\n";
  }

  // Legend, top right inside the plot area.
  const double lx = kLeft + kPlotW - 260, ly = kTop + 18;
  s += "<g class=\"legend\">\n";
  s += "<text x=\"" + px(lx) + "\" y=\"" + px(ly) + "\">" +
       xml_escape("● mean over seeds, bars ±1 std") + "</text>\n";
  if (fit) {
    s += "<text x=\"" + px(lx) + "\" y=\"" + px(ly + 18) + "\" fill=\"#1f77b4\">" +
         xml_escape("— quadratic fit, residual rms " + fixed(fit->residual_rms, 4)) + "</text>\n";
    s += "<text class=\"rho-star-label\" x=\"" + px(lx) + "\" y=\"" + px(ly + 36) + "\" fill=\"#d62728\">" +
         xml_escape("ρ* = " + fixed(fit->rho_star, 3) + ", loss " + fixed(fit->loss_star, 4) +
                    (fit->interior_minimum ? "" : " (at the range's end)")) +
         "</text>\n";
  }
  s += "</g>\n</svg>\n";
  return s;
}

}  // namespace engram
