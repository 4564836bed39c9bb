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

// 23 × 173 elements run one at a time, 23 × 172 four at a time.
TEST_F(CudaSwiglu, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(31);
  for (const Shape& shape : {Shape{23, 173}, Shape{23, 172}}) {
    SCOPED_TRACE(shape_str(shape));
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
}

// bf16 outputs (what the products take) hold the f32 outputs rounded to nearest even, bit for bit.
TEST_F(CudaSwiglu, Bf16OutputsAreTheF32OutputsRounded) {
  std::mt19937 gen(37);
  for (const Shape& shape : {Shape{19, 131}, Shape{19, 132}}) {
    SCOPED_TRACE(shape_str(shape));
    const Tensor gate = random_uniform(shape, gen, -6.0f, 6.0f).copy_to(Device::CUDA);
    const Tensor up = random_uniform(shape, gen, -2.0f, 2.0f).copy_to(Device::CUDA);
    const Tensor dout = random_uniform(shape, gen).copy_to(Device::CUDA);
    Tensor out = Tensor::empty(shape, DType::F32, Device::CUDA), dgate = out.clone(), dup = out.clone();
    Tensor out_bf16 = Tensor::empty(shape, DType::BF16, Device::CUDA), dgate_bf16 = out_bf16.clone(),
           dup_bf16 = out_bf16.clone();
    kernels::swiglu_forward(gate, up, out);
    kernels::swiglu_forward(gate, up, out_bf16);
    kernels::swiglu_backward(dout, gate, up, dgate, dup);
    kernels::swiglu_backward(dout, gate, up, dgate_bf16, dup_bf16);
    EXPECT_TRUE(bitwise_equal(out_bf16.copy_to(Device::CPU), round_to_bf16(out.copy_to(Device::CPU)).bf16)) << "out";
    EXPECT_TRUE(bitwise_equal(dgate_bf16.copy_to(Device::CPU), round_to_bf16(dgate.copy_to(Device::CPU)).bf16))
        << "dgate";
    EXPECT_TRUE(bitwise_equal(dup_bf16.copy_to(Device::CPU), round_to_bf16(dup.copy_to(Device::CPU)).bf16)) << "dup";
    EXPECT_THROW(kernels::swiglu_backward(dout, gate, up, dgate_bf16, dup), Error);  // mixed output dtypes
  }
}

}  // namespace
}  // namespace engram
