// CUDA GEMMs (cuBLASLt) against the CPU ones (OpenBLAS) on odd sizes, every transpose combination,
// with NaN-poisoned outputs or accumulation (beta = 1). Both are float32 products accumulated in
// float32 in different orders: |difference| stays within a few ulps of Σ|a·b| (k ≤ 67 terms of
// magnitude ≤ 1: atol 1e-4, rtol 1e-5). bf16 inputs are compared with the CPU product of the same
// rounded values (exact products in float32), so the same tolerance holds; a bf16 output adds its
// own rounding (rtol 2^-8).
#include <gtest/gtest.h>

#include <random>

#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaGemm = CudaTest;

TEST_F(CudaGemm, F32MatchesTheCpuForEveryTransposeAndBeta) {
  std::mt19937 gen(91);
  const int64_t m = 33, k = 67, n = 45;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      const HostDevice a = random_on_both(trans_a ? Shape{k, m} : Shape{m, k}, gen);
      const HostDevice b = random_on_both(trans_b ? Shape{n, k} : Shape{k, n}, gen);
      const std::string what = std::string("a") + (trans_a ? "^T" : "") + " · b" + (trans_b ? "^T" : "");
      HostDevice c = nan_on_both({m, n});
      kernels::gemm(a.cpu, trans_a, b.cpu, trans_b, c.cpu);
      kernels::gemm(a.gpu, trans_a, b.gpu, trans_b, c.gpu);
      expect_close_to_cpu(c.gpu, c.cpu, 1e-5, 1e-4, what);
      HostDevice acc = random_on_both({m, n}, gen);  // C = 0.5·op(A)·op(B) + C
      kernels::gemm(a.cpu, trans_a, b.cpu, trans_b, acc.cpu, 0.5f, 1.0f);
      kernels::gemm(a.gpu, trans_a, b.gpu, trans_b, acc.gpu, 0.5f, 1.0f);
      expect_close_to_cpu(acc.gpu, acc.cpu, 1e-5, 1e-4, what + ", beta 1");
    }
  }
}

TEST_F(CudaGemm, EmptyInnerDimensionWritesBetaTimesC) {
  Tensor a = Tensor::empty({3, 0}, DType::F32, Device::CUDA), b = Tensor::empty({0, 4}, DType::F32, Device::CUDA);
  Tensor c = nan_tensor({3, 4}).copy_to(Device::CUDA);
  kernels::gemm(a, false, b, false, c);
  for (float x : c.to_vector<float>()) ASSERT_EQ(x, 0.0f);
}

TEST_F(CudaGemm, Bf16InputsAccumulateInF32) {
  std::mt19937 gen(92);
  const int64_t m = 29, k = 67, n = 51;
  const Bf16Values a = round_to_bf16(random_uniform({m, k}, gen));
  const Bf16Values b = round_to_bf16(random_uniform({n, k}, gen));
  Tensor expected = nan_tensor({m, n});
  kernels::gemm(a.f32, false, b.f32, true, expected);
  const Tensor a_gpu = a.bf16.copy_to(Device::CUDA), b_gpu = b.bf16.copy_to(Device::CUDA);
  Tensor c = nan_tensor({m, n}).copy_to(Device::CUDA);
  kernels::gemm(a_gpu, false, b_gpu, true, c);
  expect_close_to_cpu(c, expected, 1e-5, 1e-4, "bf16 · bf16 -> f32");

  Tensor c_bf16 = Tensor::empty({m, n}, DType::BF16, Device::CUDA);
  kernels::gemm(a_gpu, false, b_gpu, true, c_bf16);
  const Tensor bits = c_bf16.copy_to(Device::CPU);
  Tensor as_f32 = Tensor::empty({m, n});
  for (int64_t i = 0; i < m * n; ++i) as_f32.data<float>()[i] = from_bf16(static_cast<const uint16_t*>(bits.raw())[i]);
  expect_close(as_f32, to_double(expected), 1.0 / 256, 1e-4, "bf16 · bf16 -> bf16");
}

// Sets the process-wide matmul precision for one scope.
struct ScopedMatmulPrecision {
  explicit ScopedMatmulPrecision(kernels::MatmulPrecision p) { kernels::set_matmul_precision(p); }
  ~ScopedMatmulPrecision() { kernels::set_matmul_precision(kernels::MatmulPrecision::Float32); }
};

// Under MatmulPrecision::BF16 an f32 product is the bf16 product of the operands rounded to nearest
// even: bit for bit what the bf16 path gives on copies rounded on the host (for plain, transposed and
// grouped products), and no longer the float32 product.
TEST_F(CudaGemm, Bf16PrecisionRoundsF32Operands) {
  std::mt19937 gen(94);
  const int64_t m = 29, k = 67, n = 51;
  const HostDevice a = random_on_both({k, m}, gen), b = random_on_both({n, k}, gen);
  const Tensor a_bf16 = round_to_bf16(a.cpu).bf16.copy_to(Device::CUDA);
  const Tensor b_bf16 = round_to_bf16(b.cpu).bf16.copy_to(Device::CUDA);
  Tensor expected = nan_tensor({m, n}).copy_to(Device::CUDA), exact = expected.clone();
  kernels::gemm(a_bf16, true, b_bf16, true, expected);
  kernels::gemm(a.gpu, true, b.gpu, true, exact);
  Tensor c = nan_tensor({m, n}).copy_to(Device::CUDA);
  {
    const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
    kernels::gemm(a.gpu, true, b.gpu, true, c);
  }
  EXPECT_TRUE(bitwise_equal(c.copy_to(Device::CPU), expected.copy_to(Device::CPU)));
  EXPECT_FALSE(bitwise_equal(c.copy_to(Device::CPU), exact.copy_to(Device::CPU)));

  const std::vector<int64_t> offsets{0, 10, 10, k};  // group rows of a [k, m] against b3 [3, n, m]
  const HostDevice b3 = random_on_both({3, n, m}, gen);
  const Tensor b3_bf16 = round_to_bf16(b3.cpu).bf16.copy_to(Device::CUDA);
  Tensor grouped_expected = nan_tensor({k, n}).copy_to(Device::CUDA), grouped = grouped_expected.clone();
  kernels::grouped_gemm(a_bf16, b3_bf16, true, grouped_expected, offsets);
  {
    const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
    kernels::grouped_gemm(a.gpu, b3.gpu, true, grouped, offsets);
  }
  EXPECT_TRUE(bitwise_equal(grouped.copy_to(Device::CPU), grouped_expected.copy_to(Device::CPU)));
}

TEST_F(CudaGemm, GroupedProductsMatchTheCpuWithAnEmptyGroup) {
  std::mt19937 gen(93);
  const int64_t r = 37, s = 21;
  const std::vector<int64_t> offsets{0, 5, 5, 18, 31};  // group 1 is empty; rows start unaligned
  const HostDevice a = random_on_both({31, s}, gen);
  for (bool trans_b : {false, true}) {
    const HostDevice b = random_on_both(trans_b ? Shape{4, r, s} : Shape{4, s, r}, gen);
    HostDevice c = nan_on_both({31, r});
    kernels::grouped_gemm(a.cpu, b.cpu, trans_b, c.cpu, offsets);
    kernels::grouped_gemm(a.gpu, b.gpu, trans_b, c.gpu, offsets);
    expect_close_to_cpu(c.gpu, c.cpu, 1e-5, 1e-4, trans_b ? "grouped_gemm, b^T" : "grouped_gemm");
  }
  const HostDevice dc = random_on_both({31, r}, gen);
  HostDevice db = random_on_both({4, r, s}, gen);  // accumulated into
  kernels::grouped_gemm_wgrad(dc.cpu, a.cpu, db.cpu, offsets);
  kernels::grouped_gemm_wgrad(dc.gpu, a.gpu, db.gpu, offsets);
  expect_close_to_cpu(db.gpu, db.cpu, 1e-5, 1e-4, "grouped_gemm_wgrad");
}

}  // namespace
}  // namespace engram
