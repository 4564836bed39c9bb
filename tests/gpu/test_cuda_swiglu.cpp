// CUDA SwiGLU against the CPU one on odd sizes with NaN-poisoned outputs. Same float formulas; the
// GPU's expf and fused multiply-adds leave differences of a few ulps (rtol 1e-5, atol 1e-6).
#include <gtest/gtest.h>

#include <random>

#include "kernels/swiglu.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaSwiglu = CudaTest;

TEST_F(CudaSwiglu, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(31);
  const Shape shape{23, 173};
  const HostDevice gate = random_on_both(shape, gen, -6.0f, 6.0f);
  const HostDevice up = random_on_both(shape, gen, -2.0f, 2.0f);
  const HostDevice dout = random_on_both(shape, gen);
  HostDevice out = nan_on_both(shape), dgate = nan_on_both(shape), dup = nan_on_both(shape);
  kernels::swiglu_forward(gate.cpu, up.cpu, out.cpu);
  kernels::swiglu_forward(gate.gpu, up.gpu, out.gpu);
  expect_close_to_cpu(out.gpu, out.cpu, 1e-5, 1e-6, "out");
  kernels::swiglu_backward(dout.cpu, gate.cpu, up.cpu, dgate.cpu, dup.cpu);
  kernels::swiglu_backward(dout.gpu, gate.gpu, up.gpu, dgate.gpu, dup.gpu);
  expect_close_to_cpu(dgate.gpu, dgate.cpu, 1e-5, 1e-6, "dgate");
  expect_close_to_cpu(dup.gpu, dup.cpu, 1e-5, 1e-6, "dup");
}

}  // namespace
}  // namespace engram
