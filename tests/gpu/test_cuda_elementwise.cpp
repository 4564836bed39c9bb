// CUDA elementwise kernels against the CPU ones on fresh random inputs of odd sizes, outputs
// NaN-poisoned. Tolerances: the GPU fuses multiply-adds and its expf may differ from std::exp by an
// ulp or two, so elementwise results match to a few float ulps (rtol 1e-6, or 1e-5 through
// sigmoid); bias_grad sums each column in double like the CPU but by chunks of rows, so its float
// result may differ by an ulp of the column sum (|Σ| < 256 over 16k rows of [−1, 1]: atol 3e-5, rtol
// 1e-6; a row left out or counted twice moves a column by ~0.5) and must repeat bitwise; sum_squares
// reduces in another order, so it matches to double rounding (rtol 1e-12).
#include <gtest/gtest.h>

#include <random>
#include <vector>
#include <string>

#include "kernels/elementwise.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaElementwise = CudaTest;

TEST_F(CudaElementwise, AddAndScaleMatchTheCpu) {
  std::mt19937 gen(11);
  HostDevice y = random_on_both({37, 129}, gen);
  const HostDevice x = random_on_both({37, 129}, gen);
  kernels::add_(y.cpu, x.cpu, -0.7f);
  kernels::add_(y.gpu, x.gpu, -0.7f);
  expect_close_to_cpu(y.gpu, y.cpu, 1e-6, 1e-7, "add_");
  kernels::scale_(y.cpu, 1.3f);
  kernels::scale_(y.gpu, 1.3f);
  expect_close_to_cpu(y.gpu, y.cpu, 1e-6, 1e-7, "scale_");
}

// The sum of two floats is one correctly rounded addition on both: bitwise equal.
TEST_F(CudaElementwise, AddOutOfPlaceMatchesTheCpuBitwise) {
  std::mt19937 gen(16);
  for (int64_t n : {int64_t{1}, int64_t{4771}, int64_t{300007}}) {
    const HostDevice a = random_on_both({n}, gen, -4.0f, 4.0f), b = random_on_both({n}, gen, -4.0f, 4.0f);
    HostDevice out = nan_on_both({n});
    kernels::add(a.cpu, b.cpu, out.cpu);
    kernels::add(a.gpu, b.gpu, out.gpu);
    expect_bitwise_equal_to_cpu(out.gpu, out.cpu, "add, " + std::to_string(n) + " elements");
  }
}

// A strided copy into columns: the CPU's bytes, f32 and bf16, the other columns untouched.
TEST_F(CudaElementwise, CopyIntoColumnsMatchesTheCpu) {
  std::mt19937 gen(27);
  const HostDevice src = random_on_both({37, 24}, gen);
  HostDevice dst = random_on_both({37, 72}, gen);
  kernels::copy_into_columns(src.cpu, dst.cpu, 44);
  kernels::copy_into_columns(src.gpu, dst.gpu, 44);
  expect_bitwise_equal_to_cpu(dst.gpu, dst.cpu, "f32");
  const Bf16Values src16 = round_to_bf16(src.cpu), dst16 = round_to_bf16(dst.cpu);
  Tensor dst16_gpu = dst16.bf16.copy_to(Device::CUDA), dst16_cpu = dst16.bf16.clone();
  kernels::copy_into_columns(src16.bf16, dst16_cpu, 3);
  kernels::copy_into_columns(src16.bf16.copy_to(Device::CUDA), dst16_gpu, 3);
  expect_bitwise_equal_to_cpu(dst16_gpu, dst16_cpu, "bf16, from an odd column");
}

TEST_F(CudaElementwise, SiluForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(12);
  const HostDevice x = random_on_both({1001}, gen, -8.0f, 8.0f);
  const HostDevice dy = random_on_both({1001}, gen);
  HostDevice y = nan_on_both({1001}), dx = nan_on_both({1001});
  kernels::silu_forward(x.cpu, y.cpu);
  kernels::silu_forward(x.gpu, y.gpu);
  expect_close_to_cpu(y.gpu, y.cpu, 1e-5, 1e-7, "silu_forward");
  kernels::silu_backward(dy.cpu, x.cpu, dx.cpu);
  kernels::silu_backward(dy.gpu, x.gpu, dx.gpu);
  expect_close_to_cpu(dx.gpu, dx.cpu, 1e-5, 1e-7, "silu_backward");
}

TEST_F(CudaElementwise, BiasRowsAndBiasGradMatchTheCpu) {
  std::mt19937 gen(13);
  HostDevice y = random_on_both({3, 41, 67}, gen);
  const HostDevice bias = random_on_both({67}, gen);
  kernels::add_bias_rows(y.cpu, bias.cpu);
  kernels::add_bias_rows(y.gpu, bias.gpu);
  expect_close_to_cpu(y.gpu, y.cpu, 1e-6, 1e-7, "add_bias_rows");
  HostDevice dbias = random_on_both({67}, gen);  // accumulated into
  kernels::bias_grad(y.cpu, dbias.cpu);
  kernels::bias_grad(y.gpu, dbias.gpu);
  expect_close_to_cpu(dbias.gpu, dbias.cpu, 1e-6, 1e-7, "bias_grad");
}

// Row counts around the chunking (one short chunk, exactly 256 chunks of 64, a short last chunk of
// 65-row chunks) and no rows at all, over columns that leave part of a block idle.
TEST_F(CudaElementwise, BiasGradOverManyRowsMatchesTheCpuAndRepeats) {
  std::mt19937 gen(15);
  for (int64_t rows : {int64_t{0}, int64_t{1}, int64_t{63}, int64_t{1000}, int64_t{16384}, int64_t{16421}}) {
    for (int64_t cols : {int64_t{1}, int64_t{771}}) {
      const std::string what = "bias_grad, " + std::to_string(rows) + " × " + std::to_string(cols);
      const HostDevice dy = random_on_both({rows, cols}, gen);
      HostDevice dbias = random_on_both({cols}, gen);  // accumulated into
      const Tensor start = dbias.gpu.clone();
      kernels::bias_grad(dy.cpu, dbias.cpu);
      kernels::bias_grad(dy.gpu, dbias.gpu);
      expect_close_to_cpu(dbias.gpu, dbias.cpu, 1e-6, 3e-5, what);
      Tensor again = start.clone();
      kernels::bias_grad(dy.gpu, again);
      EXPECT_TRUE(device_bitwise_equal(again, dbias.gpu)) << what << ": two runs differ";
    }
  }
}

TEST_F(CudaElementwise, SumSquaresMatchesTheCpu) {
  std::mt19937 gen(14);
  for (int64_t n : {int64_t{1}, int64_t{255}, int64_t{300007}}) {
    const HostDevice x = random_on_both({n}, gen, -3.0f, 3.0f);
    const double cpu = kernels::sum_squares(x.cpu), gpu = kernels::sum_squares(x.gpu);
    EXPECT_NEAR(gpu, cpu, 1e-12 * cpu) << n << " elements";
  }
}

// One launch per batch of 128 tensors, each cut into chunks of 32768 values: 300 tensors (three
// batches) of sizes around the chunk, empty ones, and views one element into a buffer (not 16-byte
// aligned: read one value at a time). Each sum within double rounding of the CPU's, bitwise run to run.
TEST_F(CudaElementwise, SumSquaresEachMatchesTheCpuForManyTensors) {
  std::mt19937 gen(15);
  const int64_t sizes[] = {0, 1, 3, 767, 32768, 32769, 65539, 100003};
  std::vector<Tensor> cpu, gpu;
  for (int i = 0; i < 300; ++i) {
    const int64_t n = sizes[i % 8];
    const Tensor host = random_uniform({n}, gen, -3.0f, 3.0f);
    cpu.push_back(host);
    if (i % 3 == 0) {
      const Tensor buffer = Tensor::empty({n + 1}, DType::F32, Device::CUDA);
      Tensor view = buffer.slice(1, n + 1);
      view.copy_from(host);
      gpu.push_back(view);
    } else {
      gpu.push_back(host.copy_to(Device::CUDA));
    }
  }
  const std::vector<double> want = kernels::sum_squares_each(cpu), got = kernels::sum_squares_each(gpu);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12 * want[i]) << "tensor " << i;
  EXPECT_EQ(kernels::sum_squares_each(gpu), got);
}

}  // namespace
}  // namespace engram
