// Depthwise causal dilated conv: forward against a naive double loop, backward by finite differences.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/conv.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

struct ConvCase {
  int64_t b, t, d, w;
  int dilation;
};
// Dilation > 1, width 1, and T shorter than the receptive field (W−1)·dilation + 1.
const ConvCase kCases[] = {{2, 13, 7, 4, 3}, {1, 1, 1, 1, 1}, {3, 7, 5, 1, 2}, {2, 2, 3, 4, 3},
                           {1, 9, 33, 4, 3}, {2, 5, 3, 3, 1}};

// y[b,t,c] = Σ_i w[i,c]·x[b, t − (W−1−i)·dilation, c], zero before t = 0; in double.
std::vector<double> naive_conv(const std::vector<double>& x, const std::vector<double>& w, const ConvCase& s) {
  std::vector<double> y(s.b * s.t * s.d, 0.0);
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t t = 0; t < s.t; ++t)
      for (int64_t i = 0; i < s.w; ++i) {
        const int64_t src = t - (s.w - 1 - i) * s.dilation;
        if (src < 0) continue;
        for (int64_t c = 0; c < s.d; ++c) y[(b * s.t + t) * s.d + c] += w[i * s.d + c] * x[(b * s.t + src) * s.d + c];
      }
  return y;
}

TEST(KernelConv, ForwardMatchesNaive) {
  std::mt19937 gen(1);
  for (const ConvCase& s : kCases) {
    Tensor x = random_uniform({s.b, s.t, s.d}, gen), w = random_uniform({s.w, s.d}, gen);
    Tensor y = nan_tensor({s.b, s.t, s.d});
    kernels::causal_conv_forward(x, w, s.dilation, y);
    expect_close(y, naive_conv(to_double(x), to_double(w), s), 0.0, 1e-6, "y");
  }
}

TEST(KernelConv, OutputIsCausal) {
  // Changing x at time τ changes no output before τ.
  std::mt19937 gen(2);
  const ConvCase s{1, 11, 3, 4, 2};
  Tensor x = random_uniform({s.b, s.t, s.d}, gen), w = random_uniform({s.w, s.d}, gen);
  Tensor y0 = nan_tensor({s.b, s.t, s.d}), y1 = nan_tensor({s.b, s.t, s.d});
  kernels::causal_conv_forward(x, w, s.dilation, y0);
  const int64_t tau = 6;
  x.data<float>()[tau * s.d + 1] += 1.0f;
  kernels::causal_conv_forward(x, w, s.dilation, y1);
  for (int64_t i = 0; i < tau * s.d; ++i) EXPECT_EQ(y0.data<float>()[i], y1.data<float>()[i]);
  EXPECT_NE(y0.data<float>()[tau * s.d + 1], y1.data<float>()[tau * s.d + 1]);  // the last tap reads x[t]
}

TEST(KernelConv, BackwardMatchesFiniteDifferences) {
  std::mt19937 gen(3);
  for (const ConvCase& s : kCases) {
    Tensor x = random_uniform({s.b, s.t, s.d}, gen), w = random_uniform({s.w, s.d}, gen);
    Tensor dy = random_uniform({s.b, s.t, s.d}, gen);
    Tensor dx = nan_tensor({s.b, s.t, s.d});
    Tensor dw = random_uniform({s.w, s.d}, gen);  // accumulated into
    const std::vector<float> dw_before = dw.to_vector<float>();
    kernels::causal_conv_backward(dy, x, w, s.dilation, dx, dw);

    // f(x, w) = Σ dy ⊙ conv(x, w): bilinear, so central differences are exact up to rounding.
    const std::vector<double> g = to_double(dy);
    std::vector<double> xd = to_double(x), wd = to_double(w);
    auto f = [&] { return dot(g, naive_conv(xd, wd, s)); };
    const double h = 1e-3;
    expect_close(dx, numeric_gradient(xd, f, h), 0.0, 1e-5, "dx");
    expect_close(added(dw, dw_before), numeric_gradient(wd, f, h), 0.0, 1e-5, "dw");
  }
}

TEST(KernelConv, RejectsNonPositiveDilation) {
  Tensor x = Tensor::zeros({1, 3, 2}), w = Tensor::zeros({2, 2}), y = nan_tensor({1, 3, 2});
  EXPECT_THROW(kernels::causal_conv_forward(x, w, 0, y), Error);
}

}  // namespace
}  // namespace engram
