// CUDA RMSNorm against the CPU one, forward and backward, on fresh random inputs with NaN-poisoned
// outputs: rows of 4 values at a time (width a multiple of 4, 16-byte aligned) and of one (odd widths,
// an unaligned tensor), the backward with the residual-gradient input and without, dg accumulating
// into non-zero values over row counts around its chunking (chunks of 64 rows, of more, a short last
// one), two runs bitwise equal, and the bf16 forward output (bitwise the f32 output rounded).
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

constexpr float kEps = 1e-6f;

// One norm's inputs on both devices. rstd is the CPU forward's, so both backwards start from the same
// saved value; dg starts from random values (the backward accumulates into it).
struct NormInputs {
  NormInputs(const Shape& shape, std::mt19937& gen)
      : x(random_on_both(shape, gen, -2.0f, 2.0f)),
        g(random_on_both({shape.back()}, gen, 0.5f, 1.5f)),
        dy(random_on_both(shape, gen)),
        residual(random_on_both(shape, gen)),
        dg_start(random_on_both({shape.back()}, gen)) {
    Tensor y = Tensor::empty(shape), rstd = Tensor::empty({x.cpu.rows()});
    kernels::rmsnorm_forward(x.cpu, g.cpu, kEps, y, rstd);
    saved_rstd = on_both(rstd);
  }
  HostDevice x, g, dy, residual, dg_start, saved_rstd;
};

struct Forward {
  Tensor y, rstd;
};
struct Backward {
  Tensor dx, dg;
};

const Tensor& on(Device device, const HostDevice& t) { return device == Device::CUDA ? t.gpu : t.cpu; }

Forward forward_on(Device device, const NormInputs& in) {
  Forward out{nan_tensor(in.x.cpu.shape()).copy_to(device), nan_tensor({in.x.cpu.rows()}).copy_to(device)};
  kernels::rmsnorm_forward(on(device, in.x), on(device, in.g), kEps, out.y, out.rstd);
  return out;
}

// With the residual gradient or without.
Backward backward_on(Device device, const NormInputs& in, bool residual) {
  Backward out{nan_tensor(in.x.cpu.shape()).copy_to(device), on(device, in.dg_start).clone()};
  kernels::rmsnorm_backward(on(device, in.dy), on(device, in.x), on(device, in.g), on(device, in.saved_rstd), out.dx,
                            out.dg, residual ? on(device, in.residual) : Tensor());
  return out;
}

void expect_forward_matches_the_cpu(const NormInputs& in, const std::string& what) {
  const Forward cpu = forward_on(Device::CPU, in), gpu = forward_on(Device::CUDA, in);
  expect_close_to_cpu(gpu.rstd, cpu.rstd, 2e-6, 0.0, "rstd, " + what);
  expect_close_to_cpu(gpu.y, cpu.y, 2e-6, 1e-7, "y, " + what);
}

void expect_backward_matches_the_cpu(const NormInputs& in, bool residual, double dg_atol, const std::string& what) {
  const Backward cpu = backward_on(Device::CPU, in, residual), gpu = backward_on(Device::CUDA, in, residual);
  expect_close_to_cpu(gpu.dx, cpu.dx, 1e-5, 1e-6, "dx, " + what);
  expect_close_to_cpu(gpu.dg, cpu.dg, 2e-6, dg_atol, "dg, " + what);
}

std::string describe(int64_t rows, int64_t dim, bool residual) {
  return std::to_string(rows) + " rows of " + std::to_string(dim) + (residual ? ", residual" : "");
}

// 57 rows (one chunk; three tiles of 16 and a short one) of widths taking 4 values at a time and 1.
TEST_F(CudaRmsnorm, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(21);
  for (int64_t dim : {int64_t{1}, int64_t{4}, int64_t{67}, int64_t{68}, int64_t{768}, int64_t{1031}}) {
    const NormInputs in({3, 19, dim}, gen);
    expect_forward_matches_the_cpu(in, describe(57, dim, false));
    for (bool residual : {false, true})
      expect_backward_matches_the_cpu(in, residual, 1e-6, describe(57, dim, residual));
  }
}

// The residual gradient added as dx is written: the GPU's dx without it, then add_, bit for bit
// (the same float addition), and dg the same either way.
TEST_F(CudaRmsnorm, BackwardAddsTheResidualGradient) {
  std::mt19937 gen(23);
  for (int64_t dim : {int64_t{771}, int64_t{768}}) {
    const std::string what = "dim " + std::to_string(dim);
    const NormInputs in({5, 13, dim}, gen);
    const Backward with = backward_on(Device::CUDA, in, true);
    Backward without = backward_on(Device::CUDA, in, false);
    kernels::add_(without.dx, in.residual.gpu);
    EXPECT_TRUE(device_bitwise_equal(with.dx, without.dx)) << what << ": differs from dx then add_";
    EXPECT_TRUE(device_bitwise_equal(with.dg, without.dg)) << what << ": dg changed";
  }
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

// Row counts around dg's chunking: exactly 256 chunks of 64 rows; 65-row chunks with a short last one;
// 157-row chunks (more than 16,384 rows; not a whole number of 16-row tiles); 2,344-row chunks, whose
// forward takes more rows than the grid has warps. Each forward and backward twice, bitwise equal.
TEST_F(CudaRmsnorm, ManyRowsMatchTheCpuAndRepeatBitwise) {
  struct Case {
    int64_t rows, dim;
    bool residual;
  };
  const Case cases[] = {{16384, 771, false}, {16421, 768, true}, {40000, 68, true}, {600000, 4, false}};
  std::mt19937 gen(22);
  for (const Case& c : cases) {
    const std::string what = describe(c.rows, c.dim, c.residual);
    const NormInputs in({c.rows, c.dim}, gen);
    expect_forward_matches_the_cpu(in, what);
    expect_backward_matches_the_cpu(in, c.residual, 3e-5, what);
    const Forward f1 = forward_on(Device::CUDA, in), f2 = forward_on(Device::CUDA, in);
    EXPECT_TRUE(device_bitwise_equal(f1.y, f2.y)) << "y, " << what << ": two runs differ";
    EXPECT_TRUE(device_bitwise_equal(f1.rstd, f2.rstd)) << "rstd, " << what << ": two runs differ";
    const Backward b1 = backward_on(Device::CUDA, in, c.residual), b2 = backward_on(Device::CUDA, in, c.residual);
    EXPECT_TRUE(device_bitwise_equal(b1.dx, b2.dx)) << "dx, " << what << ": two runs differ";
    EXPECT_TRUE(device_bitwise_equal(b1.dg, b2.dg)) << "dg, " << what << ": two runs differ";
  }
}

// A width that is a multiple of 4 but one tensor not 16-byte aligned (a view one float into its
// storage): one value at a time, the same results.
TEST_F(CudaRmsnorm, UnalignedTensorMatchesTheCpu) {
  std::mt19937 gen(25);
  const int64_t rows = 37, dim = 68;
  const auto unaligned = [&](const HostDevice& t) {
    Tensor view = Tensor::empty({rows * dim + 1}, DType::F32, Device::CUDA).slice(1, rows * dim + 1).view({rows, dim});
    view.copy_from(t.gpu);
    return HostDevice{t.cpu, view};
  };
  NormInputs in({rows, dim}, gen);
  const HostDevice x = in.x;
  in.x = unaligned(x);
  expect_forward_matches_the_cpu(in, "x unaligned");
  in.x = x;
  in.residual = unaligned(in.residual);
  expect_backward_matches_the_cpu(in, true, 1e-6, "dx_residual unaligned");
}

}  // namespace
}  // namespace engram
