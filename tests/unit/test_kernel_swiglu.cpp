// SwiGLU forward/backward against a naive double-precision reference and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/swiglu.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

double naive_swiglu(double gate, double up) { return gate / (1.0 + std::exp(-gate)) * up; }

TEST(KernelSwiglu, ForwardMatchesNaive) {
  std::mt19937 gen(1);
  const Shape shapes[] = {{1, 1}, {7, 13}, {3, 33}};
  for (const Shape& shape : shapes) {
    Tensor gate = random_uniform(shape, gen, -6.0f, 6.0f), up = random_uniform(shape, gen, -2.0f, 2.0f);
    Tensor out = nan_tensor(shape);
    kernels::swiglu_forward(gate, up, out);
    std::vector<double> expected(gate.numel());
    for (int64_t i = 0; i < gate.numel(); ++i)
      expected[i] = naive_swiglu(gate.data<float>()[i], up.data<float>()[i]);
    expect_close(out, expected, 0.0, 1e-5, "out");
  }
}

TEST(KernelSwiglu, BackwardMatchesNaiveAndFiniteDifferences) {
  std::mt19937 gen(2);
  const Shape shapes[] = {{1, 1}, {7, 13}, {3, 33}};
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape_str(shape));
    Tensor gate = random_uniform(shape, gen, -6.0f, 6.0f), up = random_uniform(shape, gen, -2.0f, 2.0f);
    Tensor dout = random_uniform(shape, gen);
    Tensor dgate = nan_tensor(shape), dup = nan_tensor(shape);
    kernels::swiglu_backward(dout, gate, up, dgate, dup);
    const int64_t n = gate.numel();
    std::vector<double> dgate_ref(n), dup_ref(n), dgate_num(n), dup_num(n);
    const double h = 1e-6;
    for (int64_t i = 0; i < n; ++i) {
      const double g = gate.data<float>()[i], u = up.data<float>()[i], d = dout.data<float>()[i];
      const double s = 1.0 / (1.0 + std::exp(-g));
      dgate_ref[i] = d * u * s * (1.0 + g * (1.0 - s));
      dup_ref[i] = d * g * s;
      // L = Σ dout ⊙ swiglu(gate, up), central differences per element.
      dgate_num[i] = d * (naive_swiglu(g + h, u) - naive_swiglu(g - h, u)) / (2 * h);
      dup_num[i] = d * (naive_swiglu(g, u + h) - naive_swiglu(g, u - h)) / (2 * h);
    }
    expect_close(dgate, dgate_ref, 0.0, 1e-5, "dgate");
    expect_close(dup, dup_ref, 0.0, 1e-5, "dup");
    expect_close(dgate, dgate_num, 0.0, 1e-5, "dgate vs finite differences");
    expect_close(dup, dup_num, 0.0, 1e-5, "dup vs finite differences");
  }
}

TEST(KernelSwiglu, MismatchedShapesThrow) {
  Tensor gate = Tensor::zeros({3, 5}), up = Tensor::zeros({3, 4}), out = Tensor::zeros({3, 5});
  EXPECT_THROW(kernels::swiglu_forward(gate, up, out), Error);
}

}  // namespace
}  // namespace engram
