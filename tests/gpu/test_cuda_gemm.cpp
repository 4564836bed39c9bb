// CUDA GEMMs (cuBLASLt) against the CPU ones (OpenBLAS) on odd sizes, every transpose combination,
// with NaN-poisoned outputs, accumulation (beta = 1) or an addend read from another tensor (gemm_plus). Both are
// float32 products accumulated in float32 in different orders: |difference| stays within a few ulps of Σ|a·b| (k ≤ 67
// terms of magnitude ≤ 1: atol 1e-4, rtol 1e-5). bf16 inputs are compared with the CPU product of the same rounded
// values (exact products in float32), so the same tolerance holds; a bf16 output adds its own rounding (rtol 2^-8).
// cuBLASLt plans are kept per shape, so the same product must repeat bit for bit however calls of other shapes
// interleave, and grouped products must stay right with many uneven (and empty) groups.
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/grouped_mma.h"
#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaGemm = CudaTest;

// A bf16 tensor's values as a host f32 tensor (exact).
Tensor bf16_values(const Tensor& bf16) {
  const Tensor bits = bf16.copy_to(Device::CPU);
  Tensor out = Tensor::empty(bits.shape());
  const auto* values = static_cast<const uint16_t*>(bits.raw());
  for (int64_t i = 0; i < out.numel(); ++i) out.data<float>()[i] = from_bf16(values[i]);
  return out;
}

// A device bf16 tensor of NaN (every bit set): an element a kernel fails to write stays NaN.
Tensor nan_bf16_on_device(const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::BF16);
  std::memset(t.raw(), 0xff, t.nbytes());
  return t.copy_to(Device::CUDA);
}

// The first rows of `groups` uneven groups for the one-launch grouped kernels: every fourth empty, the
// last 300 rows (not a multiple of the 128-row tile; as a weight gradient's k, more tiles than pipeline
// stages), the others 1 to 150.
std::vector<int64_t> uneven_group_offsets(int64_t groups) {
  std::vector<int64_t> offsets{0};
  for (int64_t g = 0; g < groups; ++g) {
    offsets.push_back(offsets.back() + (g % 4 == 1 ? 0 : g == groups - 1 ? 300 : 1 + (g * 37) % 150));
  }
  return offsets;
}

TEST_F(CudaGemm, F32MatchesTheCpuForEveryTransposeBetaAndAddend) {
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

      // gemm_plus: D = op(A)·op(B) + C with C another tensor, read only; also C at a 4-byte offset (the
      // plan must take the smaller of C's and D's alignments), D = C in place, and under bf16 matmuls.
      for (int64_t offset : {0, 1}) {
        const HostDevice storage = random_on_both({m * n + offset}, gen);
        const Tensor c_cpu = storage.cpu.slice(offset, m * n + offset).view({m, n});
        const Tensor c_gpu = storage.gpu.slice(offset, m * n + offset).view({m, n});
        HostDevice d = nan_on_both({m, n});
        kernels::gemm_plus(a.cpu, trans_a, b.cpu, trans_b, c_cpu, d.cpu);
        kernels::gemm_plus(a.gpu, trans_a, b.gpu, trans_b, c_gpu, d.gpu);
        const std::string at = what + ", c at element " + std::to_string(offset);
        expect_close_to_cpu(d.gpu, d.cpu, 1e-5, 1e-4, at);
        expect_bitwise_equal_to_cpu(storage.gpu, storage.cpu, "c left as it was, " + at);
      }
      HostDevice in_place = random_on_both({m, n}, gen);
      kernels::gemm_plus(a.cpu, trans_a, b.cpu, trans_b, in_place.cpu, in_place.cpu);
      kernels::gemm_plus(a.gpu, trans_a, b.gpu, trans_b, in_place.gpu, in_place.gpu);
      expect_close_to_cpu(in_place.gpu, in_place.cpu, 1e-5, 1e-4, what + ", in place");

      // As the model calls it: bf16 matmuls (f32 operands rounded), f32 addend and sum at another
      // address; the CPU multiplies the rounded values.
      const HostDevice addend = random_on_both({m, n}, gen);
      HostDevice sum = nan_on_both({m, n});
      kernels::gemm_plus(round_to_bf16(a.cpu).f32, trans_a, round_to_bf16(b.cpu).f32, trans_b, addend.cpu, sum.cpu);
      {
        const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
        kernels::gemm_plus(a.gpu, trans_a, b.gpu, trans_b, addend.gpu, sum.gpu);
      }
      expect_close_to_cpu(sum.gpu, sum.cpu, 1e-5, 1e-4, what + ", bf16 matmuls");
    }
  }
}

// k = 0: gemm writes beta·C (0 over NaN), gemm_plus copies the addend.
TEST_F(CudaGemm, EmptyInnerDimensionWritesBetaTimesC) {
  Tensor a = Tensor::empty({3, 0}, DType::F32, Device::CUDA), b = Tensor::empty({0, 4}, DType::F32, Device::CUDA);
  Tensor c = nan_tensor({3, 4}).copy_to(Device::CUDA);
  kernels::gemm(a, false, b, false, c);
  for (float x : c.to_vector<float>()) ASSERT_EQ(x, 0.0f);
  std::mt19937 gen(90);
  const HostDevice addend = random_on_both({3, 4}, gen);
  HostDevice d = nan_on_both({3, 4});
  kernels::gemm_plus(a, false, b, false, addend.gpu, d.gpu);
  expect_bitwise_equal_to_cpu(d.gpu, addend.cpu, "gemm_plus with k = 0");
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
  expect_close(bf16_values(c_bf16), to_double(expected), 1.0 / 256, 1e-4, "bf16 · bf16 -> bf16");
}

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

// gemm_float32 multiplies in true float32 under BF16 precision too (the MoE router): bitwise the
// Float32-mode product, not the rounded one, and within the f32 tolerance of the CPU.
TEST_F(CudaGemm, Float32ProductIgnoresBf16Precision) {
  std::mt19937 gen(99);
  const int64_t m = 37, k = 67, n = 24;
  const HostDevice a = random_on_both({m, k}, gen), b = random_on_both({n, k}, gen);
  Tensor exact = nan_tensor({m, n}).copy_to(Device::CUDA), rounded = exact.clone();
  kernels::gemm(a.gpu, false, b.gpu, true, exact);
  HostDevice c = nan_on_both({m, n});
  kernels::gemm_float32(a.cpu, false, b.cpu, true, c.cpu);
  {
    const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
    kernels::gemm(a.gpu, false, b.gpu, true, rounded);
    kernels::gemm_float32(a.gpu, false, b.gpu, true, c.gpu);
    // Accumulating (beta 1) as the router's gradients do.
    HostDevice acc = random_on_both({k, n}, gen);
    const HostDevice d = random_on_both({m, n}, gen);
    kernels::gemm_float32(a.cpu, true, d.cpu, false, acc.cpu, 1.0f, 1.0f);
    kernels::gemm_float32(a.gpu, true, d.gpu, false, acc.gpu, 1.0f, 1.0f);
    expect_close_to_cpu(acc.gpu, acc.cpu, 1e-5, 1e-4, "a^T · d + acc");
    const Tensor a_bf16 = kernels::matmul_operand(a.gpu);
    EXPECT_THROW(kernels::gemm_float32(a_bf16, false, b.gpu, true, c.gpu), Error);
  }
  EXPECT_TRUE(bitwise_equal(c.gpu.copy_to(Device::CPU), exact.copy_to(Device::CPU)));
  EXPECT_FALSE(bitwise_equal(c.gpu.copy_to(Device::CPU), rounded.copy_to(Device::CPU)));
  expect_close_to_cpu(c.gpu, c.cpu, 1e-5, 1e-4, "a · b^T");
}

// matmul_operand rounds once what several products take: under BF16 an f32 tensor becomes its bf16
// rounding (bf16 tensors and Float32 precision pass it through, storage shared), and a product of one
// rounded and one f32 operand is the product of both rounded, bit for bit. Under Float32 one of each
// is an error.
TEST_F(CudaGemm, MatmulOperandRoundsOnceAndMixesWithF32UnderBf16) {
  std::mt19937 gen(95);
  const int64_t m = 19, k = 43, n = 27;
  const HostDevice a = random_on_both({m, k}, gen), b = random_on_both({n, k}, gen);
  EXPECT_EQ(kernels::matmul_operand(a.gpu).raw(), a.gpu.raw());  // Float32: a itself
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  const Tensor a_operand = kernels::matmul_operand(a.gpu);
  ASSERT_EQ(a_operand.dtype(), DType::BF16);
  EXPECT_TRUE(bitwise_equal(a_operand.copy_to(Device::CPU), round_to_bf16(a.cpu).bf16));
  EXPECT_EQ(kernels::matmul_operand(a_operand).raw(), a_operand.raw());  // already bf16
  Tensor mixed = nan_tensor({m, n}).copy_to(Device::CUDA), both_f32 = mixed.clone();
  kernels::gemm(a_operand, false, b.gpu, true, mixed);
  kernels::gemm(a.gpu, false, b.gpu, true, both_f32);
  EXPECT_TRUE(device_bitwise_equal(mixed, both_f32));
  {
    const ScopedMatmulPrecision f32(kernels::MatmulPrecision::Float32);
    expect_error([&] { kernels::gemm(a_operand, false, b.gpu, true, mixed); },
                 {"gemm: a ", "one of each under BF16 matmul precision"});
  }
}

// The rounding kernel takes four values at a time where both pointers allow it and one at a time
// after them (n not a multiple of 4) or throughout (a view that starts off a 16-byte boundary):
// every way gives each value's nearest-even rounding, the host's, bit for bit, exact ties included.
TEST_F(CudaGemm, MatmulOperandRoundsEveryValueAtAnySizeAndAlignment) {
  std::mt19937 gen(97);
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  for (int64_t n : {1, 7, 4096, 4096 + 3}) {
    Tensor x = random_uniform({n + 1}, gen, -4.0f, 4.0f);
    for (int64_t i = 0; i <= n; i += 3) {  // every third value halfway between two bf16 values
      uint32_t bits = 0;
      std::memcpy(&bits, x.data<float>() + i, sizeof(bits));
      bits = (bits & 0xffff0000u) | 0x8000u;
      std::memcpy(x.data<float>() + i, &bits, sizeof(bits));
    }
    const Tensor x_gpu = x.copy_to(Device::CUDA);
    for (int64_t first : {0, 1}) {  // n values from element 0 (16-byte aligned) or 1 (not)
      const Tensor rounded = kernels::matmul_operand(x_gpu.slice(first, first + n));
      ASSERT_EQ(rounded.dtype(), DType::BF16);
      EXPECT_TRUE(bitwise_equal(rounded.copy_to(Device::CPU), round_to_bf16(x.slice(first, first + n)).bf16))
          << n << " values from element " << first;
    }
  }
}

// beta = 1 accumulates each group's product into c (the MoE sums the w1 and w3 paths' row gradients).
TEST_F(CudaGemm, GroupedProductAccumulatesWithBetaOne) {
  std::mt19937 gen(96);
  const int64_t r = 23, s = 17;
  const std::vector<int64_t> offsets{0, 7, 7, 20, 26};
  const HostDevice a = random_on_both({26, s}, gen), b = random_on_both({4, r, s}, gen);
  HostDevice c = random_on_both({26, r}, gen);
  kernels::grouped_gemm(a.cpu, b.cpu, true, c.cpu, offsets, 1.0f);
  kernels::grouped_gemm(a.gpu, b.gpu, true, c.gpu, offsets, 1.0f);
  expect_close_to_cpu(c.gpu, c.cpu, 1e-5, 1e-4, "grouped_gemm, beta 1");
}

// The one-launch grouped kernels (bf16 operands, f32 output, rows a multiple of 8 elements) against
// the CPU on the same rounded values, mma.sync and the fastest here (wgmma on an H100 built for
// sm_90a): uneven and empty groups, partial tiles along m, n and k (tiles are 128 × 128, and 32 or 64
// along k), both layouts of b, beta 0 (over NaN) and 1, and weight gradients with groups of different
// k; a repeated call is bitwise equal. Odd row lengths are not taken (the per-group path runs them,
// tested above and below).
TEST_F(CudaGemm, GroupedMmaKernelMatchesTheCpu) {
  using kernels::cuda::GroupedMmaKernel;
  std::cout << "fastest grouped kernel here: " << (kernels::cuda::grouped_wgmma_available() ? "wgmma" : "mma.sync")
            << "\n";
  std::mt19937 gen(97);
  const int64_t groups = 9, n = 136;
  const std::vector<int64_t> offsets = uneven_group_offsets(groups);
  const int64_t rows = offsets.back();
  for (const GroupedMmaKernel kernel : {GroupedMmaKernel::MmaSync, GroupedMmaKernel::Fastest}) {
    const std::string which = kernel == GroupedMmaKernel::MmaSync ? "mma.sync, " : "fastest, ";
    // k = 40: fewer tiles of k than pipeline stages; k = 136 and 264: more, so the stages are reused.
    for (const auto& [k, trans_b] :
         std::vector<std::pair<int64_t, bool>>{{40, false}, {40, true}, {136, true}, {264, false}, {264, true}}) {
      const Bf16Values a = round_to_bf16(random_uniform({rows, k}, gen));
      const Tensor a_gpu = a.bf16.copy_to(Device::CUDA);
      const Bf16Values b = round_to_bf16(random_uniform(trans_b ? Shape{groups, n, k} : Shape{groups, k, n}, gen));
      const Tensor b_gpu = b.bf16.copy_to(Device::CUDA);
      for (float beta : {0.0f, 1.0f}) {
        const std::string what = which + "k " + std::to_string(k) + (trans_b ? ", b^T" : ", b") +
                                 (beta == 0.0f ? ", beta 0" : ", beta 1");
        Tensor expected = beta == 0.0f ? nan_tensor({rows, n}) : random_uniform({rows, n}, gen);
        Tensor c = expected.copy_to(Device::CUDA), again = c.clone();
        kernels::grouped_gemm(a.f32, b.f32, trans_b, expected, offsets, beta);
        ASSERT_TRUE(kernels::cuda::grouped_mma(a_gpu, b_gpu, trans_b, c, offsets, beta, kernel)) << what;
        ASSERT_TRUE(kernels::cuda::grouped_mma(a_gpu, b_gpu, trans_b, again, offsets, beta, kernel)) << what;
        expect_close_to_cpu(c, expected, 1e-5, 1e-4, "grouped mma, " + what);
        EXPECT_TRUE(device_bitwise_equal(c, again)) << what << ": a second call differs";
      }
      // A pair: the second operands' k tiles follow the first's in one product, over NaN.
      const Bf16Values a2 = round_to_bf16(random_uniform(a.f32.shape(), gen));
      const Bf16Values b2 = round_to_bf16(random_uniform(b.f32.shape(), gen));
      Tensor expected = nan_tensor({rows, n});
      Tensor c = expected.copy_to(Device::CUDA);
      kernels::grouped_gemm_pair(a.f32, b.f32, a2.f32, b2.f32, trans_b, expected, offsets);
      ASSERT_TRUE(kernels::cuda::grouped_mma_pair(a_gpu, b_gpu, a2.bf16.copy_to(Device::CUDA),
                                                  b2.bf16.copy_to(Device::CUDA), trans_b, c, offsets, kernel));
      expect_close_to_cpu(c, expected, 1e-5, 1e-4, which + "grouped mma pair, k " + std::to_string(k));
    }
    for (const int64_t r : {136, 64}) {  // db[g] [r, s]: two tiles along m, or half of one
      const int64_t s = 48;
      const Bf16Values dc = round_to_bf16(random_uniform({rows, r}, gen));
      const Bf16Values x = round_to_bf16(random_uniform({rows, s}, gen));
      Tensor db_expected = random_uniform({groups, r, s}, gen);  // accumulated into; empty groups keep theirs
      Tensor db = db_expected.copy_to(Device::CUDA);
      kernels::grouped_gemm_wgrad(dc.f32, x.f32, db_expected, offsets);
      ASSERT_TRUE(kernels::cuda::grouped_mma_wgrad(dc.bf16.copy_to(Device::CUDA), x.bf16.copy_to(Device::CUDA), db,
                                                   offsets, kernel));
      expect_close_to_cpu(db, db_expected, 1e-5, 1e-4, which + "grouped mma weight gradient, m " + std::to_string(r));
    }
  }

  // Not taken: f32 operands, and a row length that is not a multiple of 8.
  Tensor unused = Tensor::empty({rows, n}, DType::F32, Device::CUDA);
  EXPECT_FALSE(kernels::cuda::grouped_mma(random_uniform({rows, 40}, gen).copy_to(Device::CUDA),
                                          random_uniform({groups, n, 40}, gen).copy_to(Device::CUDA), true, unused,
                                          offsets, 0.0f));
  const Tensor odd = round_to_bf16(random_uniform({rows, 41}, gen)).bf16.copy_to(Device::CUDA);
  const Tensor odd_b = round_to_bf16(random_uniform({groups, n, 41}, gen)).bf16.copy_to(Device::CUDA);
  EXPECT_FALSE(kernels::cuda::grouped_mma(odd, odd_b, true, unused, offsets, 0.0f));
}

// A bf16 c (beta 0, over NaN) from both one-launch kernels, for products (both layouts of b, fewer and
// more tiles of k than pipeline stages) and pairs, on the groups above: bit for bit the same kernel's
// float32 result rounded to nearest even (the same sums in the same order), so within the CPU's
// tolerance plus bf16's rounding (rtol 2^-8). Not taken: a bf16 c with beta 1 (the caller's per-group
// path accumulates into it) and a bf16 weight gradient.
TEST_F(CudaGemm, GroupedMmaKernelWritesBf16AsTheF32ResultRounded) {
  using kernels::cuda::GroupedMmaKernel;
  std::mt19937 gen(98);
  const int64_t groups = 9, n = 136;
  const std::vector<int64_t> offsets = uneven_group_offsets(groups);
  const int64_t rows = offsets.back();
  const auto expect_rounded = [](const Tensor& c, const Tensor& c_f32, const Tensor& expected,
                                 const std::string& what) {
    EXPECT_TRUE(bitwise_equal(c.copy_to(Device::CPU), round_to_bf16(c_f32.copy_to(Device::CPU)).bf16))
        << what << ": not the f32 result rounded to nearest even";
    expect_close(bf16_values(c), to_double(expected), 1e-5 + 1.0 / 256, 1e-4, what);
  };
  for (const GroupedMmaKernel kernel : {GroupedMmaKernel::MmaSync, GroupedMmaKernel::Fastest}) {
    const std::string which = kernel == GroupedMmaKernel::MmaSync ? "mma.sync, " : "fastest, ";
    for (const auto& [k, trans_b] : std::vector<std::pair<int64_t, bool>>{{40, true}, {264, false}, {264, true}}) {
      const Shape b_shape = trans_b ? Shape{groups, n, k} : Shape{groups, k, n};
      const Bf16Values a = round_to_bf16(random_uniform({rows, k}, gen));
      const Bf16Values b = round_to_bf16(random_uniform(b_shape, gen));
      const Bf16Values a2 = round_to_bf16(random_uniform({rows, k}, gen));
      const Bf16Values b2 = round_to_bf16(random_uniform(b_shape, gen));
      const Tensor a_gpu = a.bf16.copy_to(Device::CUDA), b_gpu = b.bf16.copy_to(Device::CUDA);
      const Tensor a2_gpu = a2.bf16.copy_to(Device::CUDA), b2_gpu = b2.bf16.copy_to(Device::CUDA);
      const std::string what = which + "k " + std::to_string(k) + (trans_b ? ", b^T" : ", b");

      Tensor expected = nan_tensor({rows, n});
      kernels::grouped_gemm(a.f32, b.f32, trans_b, expected, offsets);
      Tensor c = nan_bf16_on_device({rows, n}), c_f32 = nan_tensor({rows, n}).copy_to(Device::CUDA);
      ASSERT_TRUE(kernels::cuda::grouped_mma(a_gpu, b_gpu, trans_b, c, offsets, 0.0f, kernel)) << what;
      ASSERT_TRUE(kernels::cuda::grouped_mma(a_gpu, b_gpu, trans_b, c_f32, offsets, 0.0f, kernel)) << what;
      expect_rounded(c, c_f32, expected, "grouped mma into bf16, " + what);

      Tensor pair_expected = nan_tensor({rows, n});
      kernels::grouped_gemm_pair(a.f32, b.f32, a2.f32, b2.f32, trans_b, pair_expected, offsets);
      Tensor pair = nan_bf16_on_device({rows, n}), pair_f32 = nan_tensor({rows, n}).copy_to(Device::CUDA);
      ASSERT_TRUE(kernels::cuda::grouped_mma_pair(a_gpu, b_gpu, a2_gpu, b2_gpu, trans_b, pair, offsets, kernel))
          << what;
      ASSERT_TRUE(kernels::cuda::grouped_mma_pair(a_gpu, b_gpu, a2_gpu, b2_gpu, trans_b, pair_f32, offsets, kernel))
          << what;
      expect_rounded(pair, pair_f32, pair_expected, "grouped mma pair into bf16, " + what);
    }
  }

  const Tensor a = round_to_bf16(random_uniform({rows, 40}, gen)).bf16.copy_to(Device::CUDA);
  const Tensor b = round_to_bf16(random_uniform({groups, n, 40}, gen)).bf16.copy_to(Device::CUDA);
  Tensor c = nan_bf16_on_device({rows, n});
  EXPECT_FALSE(kernels::cuda::grouped_mma(a, b, true, c, offsets, 1.0f));
  const Tensor dc = round_to_bf16(random_uniform({rows, n}, gen)).bf16.copy_to(Device::CUDA);
  Tensor db = nan_bf16_on_device({groups, n, 40});
  EXPECT_FALSE(kernels::cuda::grouped_mma_wgrad(dc, a, db, offsets));
}

// A pair the tensor-core kernels decline (n = 12 is not a multiple of 8) runs per group: into a bf16
// c it still rounds each f32 sum once, bitwise the f32 pair's result rounded, not the first product
// rounded and then the sum with it rounded again.
TEST_F(CudaGemm, PerGroupPairIntoBf16RoundsOnce) {
  std::mt19937 gen(100);
  const int64_t groups = 4, n = 12, k = 40;
  const std::vector<int64_t> offsets = uneven_group_offsets(groups);
  const int64_t rows = offsets.back();
  const auto bf16_on_device = [&](const Shape& shape) {
    return round_to_bf16(random_uniform(shape, gen)).bf16.copy_to(Device::CUDA);
  };
  const Tensor a = bf16_on_device({rows, k}), b = bf16_on_device({groups, n, k});
  const Tensor a2 = bf16_on_device({rows, k}), b2 = bf16_on_device({groups, n, k});
  Tensor c = nan_bf16_on_device({rows, n});
  ASSERT_FALSE(kernels::cuda::grouped_mma_pair(a, b, a2, b2, true, c, offsets)) << "n = 12 must be declined";
  Tensor c_f32 = nan_tensor({rows, n}).copy_to(Device::CUDA);
  kernels::grouped_gemm_pair(a, b, a2, b2, true, c, offsets);
  kernels::grouped_gemm_pair(a, b, a2, b2, true, c_f32, offsets);
  EXPECT_TRUE(bitwise_equal(c.copy_to(Device::CPU), round_to_bf16(c_f32.copy_to(Device::CPU)).bf16));
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

// Each product's first call makes its plan and matches the CPU (on host-rounded operands under
// BF16); later calls, hits of the same plan with the other shapes interleaved in changing orders,
// repeat it bit for bit. The shapes differ in one thing each (a flag, the dims' roles, a's
// alignment, beta), so a plan key that missed one would hand a shape another's plan and fail.
TEST_F(CudaGemm, CachedPlansRepeatBitwiseWithInterleavedShapes) {
  std::mt19937 gen(95);
  struct Product {
    int64_t m, k, n;
    bool trans_a, trans_b;
    int64_t a_row_offset;  // a starts this many rows into a larger matrix (unaligned for 1)
    float beta;
  };
  const std::vector<Product> products{{33, 67, 45, false, false, 0, 0.0f}, {33, 67, 45, true, false, 0, 0.0f},
                                      {45, 67, 33, false, true, 0, 0.0f},  {33, 45, 67, false, false, 0, 0.0f},
                                      {33, 67, 45, false, false, 1, 0.0f}, {33, 67, 45, false, false, 0, 1.0f}};
  for (const auto precision : {kernels::MatmulPrecision::Float32, kernels::MatmulPrecision::BF16}) {
    const ScopedMatmulPrecision scoped(precision);
    const bool bf16 = precision == kernels::MatmulPrecision::BF16;
    std::vector<HostDevice> as, bs, cs;  // operands and each product's C before the call
    std::vector<Tensor> firsts;
    for (const Product& p : products) {
      const Shape a_shape = p.trans_a ? Shape{p.k, p.m} : Shape{p.m, p.k};
      const HostDevice a_all = random_on_both({a_shape[0] + p.a_row_offset, a_shape[1]}, gen);
      const int64_t a_rows = a_all.cpu.rows();
      as.push_back({a_all.cpu.slice(p.a_row_offset, a_rows), a_all.gpu.slice(p.a_row_offset, a_rows)});
      bs.push_back(random_on_both(p.trans_b ? Shape{p.n, p.k} : Shape{p.k, p.n}, gen));
      cs.push_back(p.beta == 0.0f ? nan_on_both({p.m, p.n}) : random_on_both({p.m, p.n}, gen));
      const std::string what = std::string(bf16 ? "bf16 mode" : "f32 mode") + ", product " +
                               std::to_string(firsts.size());
      Tensor expected = cs.back().cpu.clone();
      kernels::gemm(bf16 ? round_to_bf16(as.back().cpu).f32 : as.back().cpu, p.trans_a,
                    bf16 ? round_to_bf16(bs.back().cpu).f32 : bs.back().cpu, p.trans_b, expected, 1.0f, p.beta);
      Tensor c = cs.back().gpu.clone();
      kernels::gemm(as.back().gpu, p.trans_a, bs.back().gpu, p.trans_b, c, 1.0f, p.beta);
      expect_close_to_cpu(c, expected, 1e-5, 1e-4, what + ", first call");
      firsts.push_back(c.copy_to(Device::CPU));
    }
    const size_t count = products.size();
    for (size_t round = 1; round <= 3; ++round) {  // orders: reversed, then two rotations
      for (size_t j = 0; j < count; ++j) {
        const size_t i = round == 1 ? count - 1 - j : (j + round) % count;
        Tensor c = cs[i].gpu.clone();
        kernels::gemm(as[i].gpu, products[i].trans_a, bs[i].gpu, products[i].trans_b, c, 1.0f, products[i].beta);
        EXPECT_TRUE(bitwise_equal(c.copy_to(Device::CPU), firsts[i]))
            << (bf16 ? "bf16" : "f32") << " mode, product " << i << ", round " << round
            << ": differs from the first call";
      }
    }
  }
}

// 64 groups of uneven sizes, the first, the last and every seventh empty, as the MoE layers' per-expert
// products: both grouped products against the CPU in both precision modes (under BF16 the CPU
// multiplies the host-rounded operands), each repeated bit for bit. Group sizes stay below 41 rows,
// so wgrad sums at most 40 terms (within the head comment's tolerance).
TEST_F(CudaGemm, ManyUnevenGroupsMatchTheCpuInBothPrecisions) {
  std::mt19937 gen(96);
  const int64_t groups = 64, r = 37, s = 21;
  std::vector<int64_t> offsets{0};
  for (int64_t g = 0; g < groups; ++g) {
    const bool empty = g == 0 || g == groups - 1 || g % 7 == 3;
    offsets.push_back(offsets.back() + (empty ? 0 : 1 + (g * 29) % 40));
  }
  const int64_t rows = offsets.back();
  const HostDevice a = random_on_both({rows, s}, gen), dc = random_on_both({rows, r}, gen);
  const HostDevice b = random_on_both({groups, r, s}, gen);    // c_g = a_g · b[g]^T
  const HostDevice b_t = random_on_both({groups, s, r}, gen);  // c_g = a_g · b_t[g]
  const HostDevice db_initial = random_on_both({groups, r, s}, gen);
  for (const auto precision : {kernels::MatmulPrecision::Float32, kernels::MatmulPrecision::BF16}) {
    const ScopedMatmulPrecision scoped(precision);
    const bool bf16 = precision == kernels::MatmulPrecision::BF16;
    const std::string mode = bf16 ? "bf16 mode" : "f32 mode";
    // What the CPU multiplies: the operands, or under BF16 their roundings (exact in float32).
    const auto cpu_operand = [&](const Tensor& x) { return bf16 ? round_to_bf16(x).f32 : x; };
    for (bool trans_b : {false, true}) {
      const HostDevice& w = trans_b ? b : b_t;
      const std::string what = mode + (trans_b ? ", grouped_gemm b^T" : ", grouped_gemm");
      Tensor expected = nan_tensor({rows, r});
      kernels::grouped_gemm(cpu_operand(a.cpu), cpu_operand(w.cpu), trans_b, expected, offsets);
      Tensor c = nan_tensor({rows, r}).copy_to(Device::CUDA), again = c.clone();
      kernels::grouped_gemm(a.gpu, w.gpu, trans_b, c, offsets);
      kernels::grouped_gemm(a.gpu, w.gpu, trans_b, again, offsets);
      expect_close_to_cpu(c, expected, 1e-5, 1e-4, what);
      EXPECT_TRUE(device_bitwise_equal(c, again)) << what << ": a second call differs";
    }
    Tensor db_expected = db_initial.cpu.clone();  // accumulated into; empty groups keep theirs
    kernels::grouped_gemm_wgrad(cpu_operand(dc.cpu), cpu_operand(a.cpu), db_expected, offsets);
    Tensor db = db_initial.gpu.clone(), db_again = db_initial.gpu.clone();
    kernels::grouped_gemm_wgrad(dc.gpu, a.gpu, db, offsets);
    kernels::grouped_gemm_wgrad(dc.gpu, a.gpu, db_again, offsets);
    expect_close_to_cpu(db, db_expected, 1e-5, 1e-4, mode + ", grouped_gemm_wgrad");
    EXPECT_TRUE(device_bitwise_equal(db, db_again)) << mode << ", grouped_gemm_wgrad: a second call differs";
  }
}

}  // namespace
}  // namespace engram
