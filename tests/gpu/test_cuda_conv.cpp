// CUDA causal conv against the CPU one: forward and backward over dilations and widths (width 1,
// T shorter than the receptive field (W−1)·dilation + 1, odd D, B·T large enough that dw's rows
// are cut into many chunks whose edges fall inside sequences), with NaN-poisoned y and dx and dw
// accumulated onto random values; the shared argument checks; bitwise repeats.
// Tolerances: y and dx sum at most W float products of values in [−1, 1] in the same order, but the
// GPU fuses multiply-adds, so each differs by a few roundings of partial sums below W: atol 2e-6.
// dw is summed in double on both sides and rounded to float once, so what is added differs by at
// most an ulp of the sum (|Σ| reaches ~50 over 18000 rows, an ulp 4e-6): atol 1e-5, rtol 1e-6.
// A wrong tap or row changes an element by O(0.1).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "kernels/conv.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaConv = CudaTest;

struct ConvCase {
  int64_t b, t, d, w;
  int dilation;
};

std::string describe(const ConvCase& s) {
  return "B " + std::to_string(s.b) + " T " + std::to_string(s.t) + " D " + std::to_string(s.d) + " W " +
         std::to_string(s.w) + " dilation " + std::to_string(s.dilation);
}

TEST_F(CudaConv, ForwardAndBackwardMatchTheCpu) {
  // {2, 5, 33, 4, 3}: T = 5 < receptive field 10. {3, 300, 257, 3, 2}: 900 rows, 15 chunks of 64.
  // {9, 2000, 5, 2, 7}: 18000 rows, 254 chunks of 71 (the row count caps the chunk count).
  const ConvCase cases[] = {{1, 1, 1, 1, 1},       {2, 37, 67, 4, 3}, {2, 5, 33, 4, 3}, {2, 19, 129, 1, 2},
                            {3, 300, 257, 3, 2}, {1, 64, 771, 4, 1}, {9, 2000, 5, 2, 7}};
  std::mt19937 gen(61);
  for (const ConvCase& s : cases) {
    const Shape shape{s.b, s.t, s.d};
    const HostDevice x = random_on_both(shape, gen), w = random_on_both({s.w, s.d}, gen);
    const HostDevice dy = random_on_both(shape, gen);
    HostDevice y = nan_on_both(shape);
    kernels::causal_conv_forward(x.cpu, w.cpu, s.dilation, y.cpu);
    kernels::causal_conv_forward(x.gpu, w.gpu, s.dilation, y.gpu);
    expect_close_to_cpu(y.gpu, y.cpu, 0.0, 2e-6, "y, " + describe(s));

    HostDevice dx = nan_on_both(shape), dw = random_on_both({s.w, s.d}, gen);  // dw accumulates
    kernels::causal_conv_backward(dy.cpu, x.cpu, w.cpu, s.dilation, dx.cpu, dw.cpu);
    kernels::causal_conv_backward(dy.gpu, x.gpu, w.gpu, s.dilation, dx.gpu, dw.gpu);
    expect_close_to_cpu(dx.gpu, dx.cpu, 0.0, 2e-6, "dx, " + describe(s));
    expect_close_to_cpu(dw.gpu, dw.cpu, 1e-6, 1e-5, "dw, " + describe(s));
  }
}

TEST_F(CudaConv, RepeatsBitwise) {
  const ConvCase s{9, 2000, 37, 4, 3};
  std::mt19937 gen(62);
  const Shape shape{s.b, s.t, s.d};
  const Tensor x = random_uniform(shape, gen).copy_to(Device::CUDA);
  const Tensor w = random_uniform({s.w, s.d}, gen).copy_to(Device::CUDA);
  const Tensor dy = random_uniform(shape, gen).copy_to(Device::CUDA);
  const Tensor dw_initial = random_uniform({s.w, s.d}, gen);
  Tensor y[2], dx[2], dw[2];
  for (int run = 0; run < 2; ++run) {
    y[run] = Tensor::empty(shape, DType::F32, Device::CUDA);
    dx[run] = Tensor::empty(shape, DType::F32, Device::CUDA);
    dw[run] = dw_initial.copy_to(Device::CUDA);
    kernels::causal_conv_forward(x, w, s.dilation, y[run]);
    kernels::causal_conv_backward(dy, x, w, s.dilation, dx[run], dw[run]);
  }
  EXPECT_TRUE(bitwise_equal(y[0].copy_to(Device::CPU), y[1].copy_to(Device::CPU))) << "y";
  EXPECT_TRUE(bitwise_equal(dx[0].copy_to(Device::CPU), dx[1].copy_to(Device::CPU))) << "dx";
  EXPECT_TRUE(bitwise_equal(dw[0].copy_to(Device::CPU), dw[1].copy_to(Device::CPU))) << "dw";
}

TEST_F(CudaConv, RejectsWhatTheCpuRejects) {
  const Tensor x = Tensor::zeros({1, 3, 2}, DType::F32, Device::CUDA);
  const Tensor w = Tensor::zeros({2, 2}, DType::F32, Device::CUDA);
  Tensor y = Tensor::zeros({1, 3, 2}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::causal_conv_forward(x, w, 0, y); }, {"dilation = 0 must be >= 1"});
  const Tensor w_wrong = Tensor::zeros({2, 3}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::causal_conv_forward(x, w_wrong, 1, y); }, {"causal_conv_forward: w"});
}

}  // namespace
}  // namespace engram
