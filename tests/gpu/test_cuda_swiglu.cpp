// CUDA SwiGLU against the CPU one on odd sizes with NaN-poisoned outputs. Same float formulas; the
// GPU's expf and fused multiply-adds leave differences of a few ulps (rtol 1e-5, atol 1e-6). bf16
// inputs and outputs, aligned or not, give their f32 values' results (rounded, for outputs).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <utility>

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

// Forward and backward on the device into NaN-poisoned outputs of out_dtype, copied to the host.
struct SwigluResults {
  Tensor out, dgate, dup;
};
SwigluResults run_on_device(const Tensor& gate, const Tensor& up, const Tensor& dout, DType out_dtype) {
  const Tensor nan = nan_tensor(gate.shape());
  const Tensor poison = out_dtype == DType::BF16 ? round_to_bf16(nan).bf16 : nan;  // NaN rounds to NaN
  Tensor out = poison.copy_to(Device::CUDA), dgate = poison.copy_to(Device::CUDA), dup = poison.copy_to(Device::CUDA);
  kernels::swiglu_forward(gate, up, out);
  kernels::swiglu_backward(dout, gate, up, dgate, dup);
  return {out.copy_to(Device::CPU), dgate.copy_to(Device::CPU), dup.copy_to(Device::CPU)};
}

// bf16 gate and up, or dout, or all three (as the expert products write them) are read as the floats
// they hold: bitwise the results of those values stored as f32, so within the tolerance above of the
// CPU's on them; into bf16 outputs, those results rounded.
TEST_F(CudaSwiglu, Bf16InputsGiveTheResultsOfTheirF32Values) {
  std::mt19937 gen(41);
  for (const Shape& shape : {Shape{23, 173}, Shape{23, 172}}) {
    SCOPED_TRACE(shape_str(shape));
    const Bf16Values gate = round_to_bf16(random_uniform(shape, gen, -6.0f, 6.0f));
    const Bf16Values up = round_to_bf16(random_uniform(shape, gen, -2.0f, 2.0f));
    const Bf16Values dout = round_to_bf16(random_uniform(shape, gen));
    Tensor out = nan_tensor(shape), dgate = nan_tensor(shape), dup = nan_tensor(shape);
    kernels::swiglu_forward(gate.f32, up.f32, out);
    kernels::swiglu_backward(dout.f32, gate.f32, up.f32, dgate, dup);
    const auto on_device = [](const Bf16Values& v, bool bf16) { return (bf16 ? v.bf16 : v.f32).copy_to(Device::CUDA); };
    const SwigluResults f32_inputs =
        run_on_device(on_device(gate, false), on_device(up, false), on_device(dout, false), DType::F32);
    for (const auto& [bf16_gate, bf16_dout] : {std::pair{true, false}, std::pair{false, true}, std::pair{true, true}}) {
      SCOPED_TRACE(std::string(bf16_gate ? "bf16" : "f32") + " gate and up, " + (bf16_dout ? "bf16" : "f32") + " dout");
      const Tensor g = on_device(gate, bf16_gate), u = on_device(up, bf16_gate), d = on_device(dout, bf16_dout);
      const SwigluResults f32 = run_on_device(g, u, d, DType::F32), bf16 = run_on_device(g, u, d, DType::BF16);
      expect_close(f32.out, to_double(out), 1e-5, 1e-6, "out");
      expect_close(f32.dgate, to_double(dgate), 1e-5, 1e-6, "dgate");
      expect_close(f32.dup, to_double(dup), 1e-5, 1e-6, "dup");
      EXPECT_TRUE(bitwise_equal(f32.out, f32_inputs.out)) << "out";
      EXPECT_TRUE(bitwise_equal(f32.dgate, f32_inputs.dgate)) << "dgate";
      EXPECT_TRUE(bitwise_equal(f32.dup, f32_inputs.dup)) << "dup";
      EXPECT_TRUE(bitwise_equal(bf16.out, round_to_bf16(f32.out).bf16)) << "bf16 out";
      EXPECT_TRUE(bitwise_equal(bf16.dgate, round_to_bf16(f32.dgate).bf16)) << "bf16 dgate";
      EXPECT_TRUE(bitwise_equal(bf16.dup, round_to_bf16(f32.dup).bf16)) << "bf16 dup";
    }
    // Gate and up of different dtypes are refused.
    Tensor f32_out = Tensor::empty(shape, DType::F32, Device::CUDA);
    EXPECT_THROW(kernels::swiglu_forward(on_device(gate, true), on_device(up, false), f32_out), Error);
  }
}

// bf16 views that start 8 but not 16 bytes past an aligned address (4 values in: the four-value
// path) or only 4 bytes past one (2 values in: one value at a time), inputs and outputs alike, give
// bitwise the results of aligned tensors.
TEST_F(CudaSwiglu, Bf16ViewsAtAnyAlignmentGiveTheAlignedResults) {
  std::mt19937 gen(43);
  const Shape shape{23, 172};
  const auto bf16_on_device = [&](float lo, float hi) {
    return round_to_bf16(random_uniform(shape, gen, lo, hi)).bf16.copy_to(Device::CUDA);
  };
  const Tensor gate = bf16_on_device(-6.0f, 6.0f), up = bf16_on_device(-2.0f, 2.0f), dout = bf16_on_device(-1.0f, 1.0f);
  const SwigluResults aligned = run_on_device(gate, up, dout, DType::BF16);
  for (const int64_t offset : {4, 2}) {
    SCOPED_TRACE("views " + std::to_string(offset) + " bf16 values past an aligned start");
    const auto offset_copy = [&](const Tensor& t) {
      Tensor view = Tensor::empty({t.numel() + offset}, t.dtype(), Device::CUDA)
                        .slice(offset, offset + t.numel())
                        .view(t.shape());
      view.copy_from(t);
      return view;
    };
    const Tensor poison = round_to_bf16(nan_tensor(shape)).bf16.copy_to(Device::CUDA);
    Tensor out = offset_copy(poison), dgate = offset_copy(poison), dup = offset_copy(poison);
    const Tensor g = offset_copy(gate), u = offset_copy(up), d = offset_copy(dout);
    kernels::swiglu_forward(g, u, out);
    kernels::swiglu_backward(d, g, u, dgate, dup);
    EXPECT_TRUE(bitwise_equal(out.copy_to(Device::CPU), aligned.out)) << "out";
    EXPECT_TRUE(bitwise_equal(dgate.copy_to(Device::CPU), aligned.dgate)) << "dgate";
    EXPECT_TRUE(bitwise_equal(dup.copy_to(Device::CPU), aligned.dup)) << "dup";
  }
}

}  // namespace
}  // namespace engram
