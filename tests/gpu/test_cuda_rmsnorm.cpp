// CUDA RMSNorm against the CPU one, forward and backward, on odd sizes with NaN-poisoned outputs.
// Both accumulate in double; they differ in summation order, so rstd may differ by an ulp
// (rtol 2e-6 on y, rstd and dg) and dx, which subtracts two close terms, by a little more
// (rtol 1e-5 with atol 1e-6).
#include <gtest/gtest.h>

#include <random>

#include "kernels/rmsnorm.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaRmsnorm = CudaTest;

TEST_F(CudaRmsnorm, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(21);
  for (int64_t dim : {int64_t{1}, int64_t{67}, int64_t{1031}}) {
    const Shape shape{3, 19, dim};
    const HostDevice x = random_on_both(shape, gen, -2.0f, 2.0f);
    const HostDevice g = random_on_both({dim}, gen, 0.5f, 1.5f);
    const HostDevice dy = random_on_both(shape, gen);
    HostDevice y = nan_on_both(shape), rstd = nan_on_both({57});
    kernels::rmsnorm_forward(x.cpu, g.cpu, 1e-6f, y.cpu, rstd.cpu);
    kernels::rmsnorm_forward(x.gpu, g.gpu, 1e-6f, y.gpu, rstd.gpu);
    expect_close_to_cpu(rstd.gpu, rstd.cpu, 2e-6, 0.0, "rstd, dim " + std::to_string(dim));
    expect_close_to_cpu(y.gpu, y.cpu, 2e-6, 1e-7, "y, dim " + std::to_string(dim));

    // The backward from the same saved rstd on both sides.
    const HostDevice saved = on_both(rstd.cpu);
    HostDevice dx = nan_on_both(shape), dg = random_on_both({dim}, gen);  // dg accumulates
    kernels::rmsnorm_backward(dy.cpu, x.cpu, g.cpu, saved.cpu, dx.cpu, dg.cpu);
    kernels::rmsnorm_backward(dy.gpu, x.gpu, g.gpu, saved.gpu, dx.gpu, dg.gpu);
    expect_close_to_cpu(dx.gpu, dx.cpu, 1e-5, 1e-6, "dx, dim " + std::to_string(dim));
    expect_close_to_cpu(dg.gpu, dg.cpu, 2e-6, 1e-6, "dg, dim " + std::to_string(dim));
  }
}

}  // namespace
}  // namespace engram
