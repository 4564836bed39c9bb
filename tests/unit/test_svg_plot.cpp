// The sweep's SVG (sweep/svg_plot.h): a well-formed standalone document (balanced tags, the SVG
// namespace, escaped text); one circle per point at the x the axis range gives; error bars exactly
// for the points with a spread; the fitted curve and the ρ* label only with a fit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "sweep/svg_plot.h"

namespace engram {
namespace {

// Every tag: "<name ...>" opens, "</name>" closes the innermost, "<name .../>" stands alone.
// Returns "" when balanced, else what went wrong.
std::string tag_balance_error(const std::string& svg) {
  std::vector<std::string> open;
  for (size_t at = svg.find('<'); at != std::string::npos; at = svg.find('<', at + 1)) {
    const size_t end = svg.find('>', at);
    if (end == std::string::npos) return "unterminated tag at " + std::to_string(at);
    const std::string tag = svg.substr(at + 1, end - at - 1);
    if (tag.find('<') != std::string::npos) return "'<' inside tag " + tag;
    if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1)) return "unexpected </" + tag.substr(1) + ">";
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find_first_of(" \n")));
    }
  }
  return open.empty() ? "" : "unclosed <" + open.back() + ">";
}

// The elements "<name ...>" with their attribute text, in document order.
std::vector<std::string> elements(const std::string& svg, const std::string& name) {
  std::vector<std::string> out;
  const std::string start = "<" + name + " ";
  for (size_t at = svg.find(start); at != std::string::npos; at = svg.find(start, at + 1))
    out.push_back(svg.substr(at, svg.find('>', at) - at + 1));
  return out;
}

double attribute(const std::string& element, const std::string& name) {
  std::smatch m;
  const std::regex re(" " + name + "=\"([-0-9.]+)\"");
  EXPECT_TRUE(std::regex_search(element, m, re)) << name << " in " << element;
  return m.empty() ? NAN : std::stod(m[1]);
}

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) ++n;
  return n;
}

std::vector<SweepPlotPoint> sample_points() {
  return {{0.0, 3.30, 0.02, 3}, {0.2, 3.10, 0.0, 1}, {0.5, 3.00, 0.01, 2}, {0.8, 2.95, 0.03, 3}, {1.0, 3.05, 0.0, 1}};
}

QuadraticFit sample_fit() {
  QuadraticFit f;
  f.a = 1.0, f.b = -1.4, f.c = 3.4;  // vertex 0.7
  f.rho_star = 0.7;
  f.loss_star = 1.0 * 0.49 - 1.4 * 0.7 + 3.4;
  f.residual_rms = 0.012;
  f.interior_minimum = true;
  return f;
}

TEST(SvgPlot, IsAWellFormedStandaloneDocument) {
  const QuadraticFit fit = sample_fit();
  const std::string svg = render_sweep_svg(sample_points(), &fit, "loss vs ρ: <tiny> & \"friends\"");
  ASSERT_EQ(svg.rfind("<svg ", 0), 0u) << svg.substr(0, 80);
  const std::string root = svg.substr(0, svg.find('>'));
  EXPECT_NE(root.find("xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos) << root;
  EXPECT_EQ(tag_balance_error(svg), "");
  EXPECT_NE(svg.find("loss vs ρ: &lt;tiny&gt; &amp; &quot;friends&quot;"), std::string::npos);
  EXPECT_EQ(svg.find("<tiny>"), std::string::npos);
  EXPECT_NE(svg.find("ρ (share of sparse parameters in routed experts)"), std::string::npos);
  EXPECT_NE(svg.find("validation loss"), std::string::npos);
  EXPECT_GE(count(svg, "class=\"tick-label\""), 6u);  // ticks on both axes
  // Every '&' starts an entity.
  for (size_t at = svg.find('&'); at != std::string::npos; at = svg.find('&', at + 1))
    EXPECT_NE(svg.substr(at, 6).find(';'), std::string::npos) << svg.substr(at, 12);
}

TEST(SvgPlot, PointsErrorBarsCurveAndRhoStar) {
  const std::vector<SweepPlotPoint> points = sample_points();
  const QuadraticFit fit = sample_fit();
  const std::string with_fit = render_sweep_svg(points, &fit, "t");
  EXPECT_EQ(elements(with_fit, "circle").size(), points.size());
  EXPECT_EQ(count(with_fit, "class=\"error-bar\""), 3u);  // the three points with std > 0
  EXPECT_EQ(count(with_fit, "<polyline class=\"fit\""), 1u);
  char label[32];
  std::snprintf(label, sizeof label, "ρ* = %.3f", fit.rho_star);
  EXPECT_NE(with_fit.find(label), std::string::npos) << label;

  const std::string without_fit = render_sweep_svg(points, nullptr, "t");
  EXPECT_EQ(tag_balance_error(without_fit), "");
  EXPECT_EQ(elements(without_fit, "circle").size(), points.size());
  EXPECT_EQ(without_fit.find("polyline"), std::string::npos);
  EXPECT_EQ(without_fit.find("ρ*"), std::string::npos);

  std::vector<SweepPlotPoint> no_spread = points;
  for (auto& p : no_spread) p.std_loss = 0;
  EXPECT_EQ(count(render_sweep_svg(no_spread, &fit, "t"), "error-bar"), 0u);
}

// ρ ∈ [0, 1] spans the plot area's width exactly; lower loss is lower on the page (larger y).
TEST(SvgPlot, PointsMapIntoThePlotArea) {
  const std::vector<SweepPlotPoint> points = sample_points();
  const std::string svg = render_sweep_svg(points, nullptr, "t");
  const std::vector<std::string> area = elements(svg, "rect class=\"plot-area\"");
  ASSERT_EQ(area.size(), 1u);
  const double x0 = attribute(area[0], "x"), width = attribute(area[0], "width");
  const double y0 = attribute(area[0], "y"), height = attribute(area[0], "height");
  const std::vector<std::string> circles = elements(svg, "circle");
  ASSERT_EQ(circles.size(), points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    SCOPED_TRACE(circles[i]);
    EXPECT_NEAR(attribute(circles[i], "cx"), x0 + points[i].rho * width, 0.01);
    const double cy = attribute(circles[i], "cy");
    EXPECT_GT(cy, y0);
    EXPECT_LT(cy, y0 + height);
  }
  // Losses 3.30 > 3.10 > 3.00 > 2.95: y grows down the page.
  EXPECT_LT(attribute(circles[0], "cy"), attribute(circles[1], "cy"));
  EXPECT_LT(attribute(circles[1], "cy"), attribute(circles[2], "cy"));
  EXPECT_LT(attribute(circles[2], "cy"), attribute(circles[3], "cy"));
}

TEST(SvgPlot, RejectsBadPoints) {
  EXPECT_THROW(render_sweep_svg({}, nullptr, "t"), Error);
  EXPECT_THROW(render_sweep_svg({{0.5, NAN, 0.0, 1}}, nullptr, "t"), Error);
  EXPECT_THROW(render_sweep_svg({{0.5, 3.0, -0.1, 2}}, nullptr, "t"), Error);
}

}  // namespace
}  // namespace engram
