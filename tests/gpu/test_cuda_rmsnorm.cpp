// CUDA RMSNorm against the CPU one, forward and backward, on odd sizes with NaN-poisoned outputs, and
// dg over many rows (its column sums go by chunks of rows) with a bitwise repeat; the backward's
// residual-gradient input, and the bf16 forward output (bitwise the f32 output rounded).
// Both accumulate in double; they differ in summation order, so rstd may differ by an ulp
// (rtol 2e-6 on y, rstd and dg) and dx, which subtracts two close terms, by a little more
// (rtol 1e-5 with atol 1e-6). Over 16k rows dg's column sums reach ~250, where the float rounding of
// a double sum may differ by an ulp (1.5e-5) and cancel against dg's start: atol 3e-5 there (a row
// left out or counted twice moves a column by ~0.9 on average).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "kernels/elementwise.h"
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

// The residual gradient added as dx is written: the GPU's dx without it, then add_, bit for bit
// (the same float addition), and the CPU's to dx's tolerance.
TEST_F(CudaRmsnorm, BackwardAddsTheResidualGradient) {
  std::mt19937 gen(23);
  const Shape shape{5, 13, 771};
  const HostDevice x = random_on_both(shape, gen, -2.0f, 2.0f);
  const HostDevice g = random_on_both({771}, gen, 0.5f, 1.5f);
  const HostDevice dy = random_on_both(shape, gen), residual = random_on_both(shape, gen);
  Tensor y = Tensor::empty(shape), rstd = Tensor::empty({65});
  kernels::rmsnorm_forward(x.cpu, g.cpu, 1e-6f, y, rstd);
  const HostDevice saved = on_both(rstd);
  HostDevice dx = nan_on_both(shape), dg = on_both(Tensor::zeros({771}));
  kernels::rmsnorm_backward(dy.cpu, x.cpu, g.cpu, saved.cpu, dx.cpu, dg.cpu, residual.cpu);
  kernels::rmsnorm_backward(dy.gpu, x.gpu, g.gpu, saved.gpu, dx.gpu, dg.gpu, residual.gpu);
  expect_close_to_cpu(dx.gpu, dx.cpu, 1e-5, 1e-6, "dx + residual");
  Tensor dx_then_add = Tensor::empty(shape, DType::F32, Device::CUDA);
  Tensor dg_alone = Tensor::zeros({771}, DType::F32, Device::CUDA);
  kernels::rmsnorm_backward(dy.gpu, x.gpu, g.gpu, saved.gpu, dx_then_add, dg_alone);
  kernels::add_(dx_then_add, residual.gpu);
  EXPECT_TRUE(device_bitwise_equal(dx.gpu, dx_then_add)) << "differs from dx then add_";
  EXPECT_TRUE(device_bitwise_equal(dg.gpu, dg_alone)) << "dg changed";
}

// A bf16 y (what the products take) holds the f32 y rounded to nearest even, bit for bit, with the
// same rstd.
TEST_F(CudaRmsnorm, Bf16OutputIsTheF32OutputRounded) {
  std::mt19937 gen(24);
  for (int64_t dim : {int64_t{1}, int64_t{67}, int64_t{768}, int64_t{1031}}) {
    const std::string what = "dim " + std::to_string(dim);
    const Shape shape{7, 11, dim};
    const Tensor x = random_uniform(shape, gen, -3.0f, 3.0f).copy_to(Device::CUDA);
    const Tensor g = random_uniform({dim}, gen, 0.5f, 1.5f).copy_to(Device::CUDA);
    Tensor y = Tensor::empty(shape, DType::F32, Device::CUDA), rstd = Tensor::empty({77}, DType::F32, Device::CUDA);
    Tensor y_bf16 = Tensor::empty(shape, DType::BF16, Device::CUDA), rstd_bf16 = rstd.clone();
    kernels::rmsnorm_forward(x, g, 1e-6f, y, rstd);
    kernels::rmsnorm_forward(x, g, 1e-6f, y_bf16, rstd_bf16);
    EXPECT_TRUE(bitwise_equal(y_bf16.copy_to(Device::CPU), round_to_bf16(y.copy_to(Device::CPU)).bf16)) << what;
    EXPECT_TRUE(device_bitwise_equal(rstd_bf16, rstd)) << what;
  }
  const Tensor x = Tensor::zeros({2, 3}, DType::F32, Device::CUDA), g = Tensor::zeros({3}, DType::F32, Device::CUDA);
  Tensor y_i32 = Tensor::empty({2, 3}, DType::I32, Device::CUDA), rstd = Tensor::empty({2}, DType::F32, Device::CUDA);
  EXPECT_THROW(kernels::rmsnorm_forward(x, g, 1e-6f, y_i32, rstd), Error);
}

// Row counts around dg's chunking (exactly 256 chunks of 64 rows; 65-row chunks with a short last one).
TEST_F(CudaRmsnorm, DgOverManyRowsMatchesTheCpuAndRepeats) {
  std::mt19937 gen(22);
  const int64_t dim = 771;
  for (int64_t rows : {int64_t{16384}, int64_t{16421}}) {
    const std::string what = std::to_string(rows) + " rows";
    const HostDevice x = random_on_both({rows, dim}, gen, -2.0f, 2.0f);
    const HostDevice g = random_on_both({dim}, gen, 0.5f, 1.5f);
    const HostDevice dy = random_on_both({rows, dim}, gen);
    Tensor y = Tensor::empty({rows, dim}), rstd = Tensor::empty({rows});
    kernels::rmsnorm_forward(x.cpu, g.cpu, 1e-6f, y, rstd);
    const HostDevice saved = on_both(rstd);
    HostDevice dx = nan_on_both({rows, dim}), dg = random_on_both({dim}, gen);  // dg accumulates
    const Tensor dg_start = dg.gpu.clone();
    kernels::rmsnorm_backward(dy.cpu, x.cpu, g.cpu, saved.cpu, dx.cpu, dg.cpu);
    kernels::rmsnorm_backward(dy.gpu, x.gpu, g.gpu, saved.gpu, dx.gpu, dg.gpu);
    expect_close_to_cpu(dx.gpu, dx.cpu, 1e-5, 1e-6, "dx, " + what);
    expect_close_to_cpu(dg.gpu, dg.cpu, 2e-6, 3e-5, "dg, " + what);
    Tensor dx_again = Tensor::empty({rows, dim}, DType::F32, Device::CUDA), dg_again = dg_start.clone();
    kernels::rmsnorm_backward(dy.gpu, x.gpu, g.gpu, saved.gpu, dx_again, dg_again);
    EXPECT_TRUE(device_bitwise_equal(dg_again, dg.gpu)) << "dg, " << what << ": two runs differ";
    EXPECT_TRUE(device_bitwise_equal(dx_again, dx.gpu)) << "dx, " << what << ": two runs differ";
  }
}

}  // namespace
}  // namespace engram
