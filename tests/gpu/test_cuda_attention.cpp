// CUDA causal attention (the fused flash-attention kernels) against the CPU one: out, lse, dq, dk, dv
// on random inputs with NaN-poisoned outputs, for head dims in each kernel instance (up to 64, 128,
// 256; odd ones zero-padded), T = 1 and T not a multiple of any tile; then bitwise repeatability and
// the error past the largest instance.
//
// Tolerance: both sides compute in float32 but sum in different orders (the CPU: sgemm over the full
// masked [T, T] scores, exp(s − lse) with lse from a double sum; the GPU: an online softmax over key
// tiles, rescaled as the row max grows, and P recomputed in the backward). Errors are a few ulp of the
// terms summed: about 1e-6 of a tensor's largest magnitude against a double reference. So an element x
// must be within 2e-5·(|x| + s), s = max(1, the tensor's largest |x|): gradients are sums that cancel
// to near zero in places (at T = 1, dq and dk are exactly 0 and both sides return rounding noise), and
// 1 is the inputs' scale.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "kernels/attention.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaAttention = CudaTest;

constexpr double kTolerance = 2e-5;

struct Dims {
  int64_t batch, seq, heads, head_dim;
  Shape shape() const { return {batch, seq, heads, head_dim}; }
  Shape lse_shape() const { return {batch, heads, seq}; }
  std::string name() const {
    return "B " + std::to_string(batch) + ", T " + std::to_string(seq) + ", H " + std::to_string(heads) +
           ", d_h " + std::to_string(head_dim);
  }
};

// |gpu − cpu| <= kTolerance·(|cpu| + scale), scale = max(1, the largest |cpu|).
void expect_matches_cpu(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  double scale = 1.0;
  for (float x : cpu.to_vector<float>()) scale = std::max(scale, static_cast<double>(std::fabs(x)));
  expect_close_to_cpu(gpu, cpu, kTolerance, kTolerance * scale, what);
}

TEST_F(CudaAttention, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(77);
  const Dims cases[] = {
      {1, 1, 1, 64},    {2, 1, 3, 128},   {2, 200, 3, 64},  {1, 200, 2, 128}, {1, 64, 2, 128},
      {2, 67, 2, 72},   {1, 130, 1, 1},   {3, 33, 2, 8},    {1, 70, 2, 24},   {1, 100, 2, 256},
      {1, 45, 1, 200},
  };
  for (const Dims& d : cases) {
    const std::string name = d.name();
    // Inputs in [−2, 2]: scores of a few units, so softmax rows are far from uniform.
    const HostDevice q = random_on_both(d.shape(), gen, -2.0f, 2.0f), k = random_on_both(d.shape(), gen, -2.0f, 2.0f);
    const HostDevice v = random_on_both(d.shape(), gen), dout = random_on_both(d.shape(), gen);
    HostDevice out = nan_on_both(d.shape()), lse = nan_on_both(d.lse_shape());
    kernels::attention_forward(q.cpu, k.cpu, v.cpu, out.cpu, lse.cpu);
    kernels::attention_forward(q.gpu, k.gpu, v.gpu, out.gpu, lse.gpu);
    expect_matches_cpu(out.gpu, out.cpu, "out, " + name);
    expect_matches_cpu(lse.gpu, lse.cpu, "lse, " + name);

    // The backward from the same saved out and lse on both sides.
    const HostDevice saved_out = on_both(out.cpu), saved_lse = on_both(lse.cpu);
    HostDevice dq = nan_on_both(d.shape()), dk = nan_on_both(d.shape()), dv = nan_on_both(d.shape());
    kernels::attention_backward(dout.cpu, q.cpu, k.cpu, v.cpu, saved_out.cpu, saved_lse.cpu, dq.cpu, dk.cpu, dv.cpu);
    kernels::attention_backward(dout.gpu, q.gpu, k.gpu, v.gpu, saved_out.gpu, saved_lse.gpu, dq.gpu, dk.gpu, dv.gpu);
    expect_matches_cpu(dq.gpu, dq.cpu, "dq, " + name);
    expect_matches_cpu(dk.gpu, dk.cpu, "dk, " + name);
    expect_matches_cpu(dv.gpu, dv.cpu, "dv, " + name);
  }
}

TEST_F(CudaAttention, TwoRunsAreBitwiseIdentical) {
  std::mt19937 gen(78);
  for (int64_t head_dim : {int64_t{64}, int64_t{128}}) {
    const Dims d{2, 300, 4, head_dim};
    const Tensor q = random_uniform(d.shape(), gen, -2.0f, 2.0f).copy_to(Device::CUDA);
    const Tensor k = random_uniform(d.shape(), gen, -2.0f, 2.0f).copy_to(Device::CUDA);
    const Tensor v = random_uniform(d.shape(), gen).copy_to(Device::CUDA);
    const Tensor dout = random_uniform(d.shape(), gen).copy_to(Device::CUDA);
    struct Results {
      Tensor out, lse, dq, dk, dv;
    };
    auto run = [&] {
      Results r{nan_tensor(d.shape()).copy_to(Device::CUDA), nan_tensor(d.lse_shape()).copy_to(Device::CUDA),
                nan_tensor(d.shape()).copy_to(Device::CUDA), nan_tensor(d.shape()).copy_to(Device::CUDA),
                nan_tensor(d.shape()).copy_to(Device::CUDA)};
      kernels::attention_forward(q, k, v, r.out, r.lse);
      kernels::attention_backward(dout, q, k, v, r.out, r.lse, r.dq, r.dk, r.dv);
      return Results{r.out.copy_to(Device::CPU), r.lse.copy_to(Device::CPU), r.dq.copy_to(Device::CPU),
                     r.dk.copy_to(Device::CPU), r.dv.copy_to(Device::CPU)};
    };
    const Results first = run(), second = run();
    const std::string name = d.name();
    EXPECT_TRUE(bitwise_equal(first.out, second.out)) << "out, " << name;
    EXPECT_TRUE(bitwise_equal(first.lse, second.lse)) << "lse, " << name;
    EXPECT_TRUE(bitwise_equal(first.dq, second.dq)) << "dq, " << name;
    EXPECT_TRUE(bitwise_equal(first.dk, second.dk)) << "dk, " << name;
    EXPECT_TRUE(bitwise_equal(first.dv, second.dv)) << "dv, " << name;
  }
}

TEST_F(CudaAttention, HeadDimPastTheLargestInstanceIsAnError) {
  const Dims d{1, 4, 1, 257};
  const Tensor x = Tensor::zeros(d.shape(), DType::F32, Device::CUDA);
  Tensor out = Tensor::empty(d.shape(), DType::F32, Device::CUDA);
  Tensor lse = Tensor::empty(d.lse_shape(), DType::F32, Device::CUDA);
  expect_error([&] { kernels::attention_forward(x, x, x, out, lse); },
               {"attention_forward: head_dim 257 exceeds the largest CUDA instance (256)"});
}

}  // namespace
}  // namespace engram
