// CUDA causal attention (the fused flash-attention kernels) against the CPU one: out, lse, dq, dk, dv
// on random inputs with NaN-poisoned outputs, in both matmul precisions. Float32 (the parity mode):
// head dims in each kernel instance (up to 64, 128, 256; odd ones zero-padded), T = 1 and T not a
// multiple of any tile. BF16 (the tensor-core path, head dims 64 and 128): T = 1, 67, 200, 512 and
// the tile edges (64, 65, 96, 128, 129, 257, 300), inputs that are not 16-byte aligned, and bf16
// inputs (what the model gives that path), which must give the results of their f32 values bit for
// bit, and are an error where that path does not run; bf16 o and dv, the f32 ones rounded. Then bitwise repeatability in both modes, the
// float32 fallback of other head dims under BF16, and the error past the largest instance.
//
// Tolerance, Float32: both sides compute in float32 but sum in different orders (the CPU: sgemm over
// the full masked [T, T] scores, exp(s − lse) with lse from a double sum; the GPU: an online softmax
// over key tiles, rescaled as the row max grows, and P recomputed in the backward). Errors are a few
// ulp of the terms summed: about 1e-6 of a tensor's largest magnitude against a double reference. So
// an element x must be within 2e-5·(|x| + s), s = max(1, the tensor's largest |x|): gradients are sums
// that cancel to near zero in places (at T = 1, dq and dk are exactly 0 and both sides return rounding
// noise), and 1 is the inputs' scale.
//
// Tolerance, BF16: the reference is the CPU on q, k, v, dout rounded to bf16, which is what the GPU's
// products read, so products of inputs agree as in Float32 (lse, which has no other rounding, keeps the
// Float32 tolerance). What remains is the GPU's own rounding of P (in P·V, Pᵀ·dO) and dS (in dS·K,
// dSᵀ·Q) to bf16: a relative error of at most 2^-9 per term. out = Σ_j P_ij·v_j / Σ_j P_ij then errs
// by at most 2^-9·max|v| and in practice by ~2^-9 of a typical |out| (the per-term errors have random
// signs, like the terms); dv likewise. dq and dk are sums of dS terms that cancel (Σ_j dS_ij = 0), so
// their terms are larger than their results, by a factor of a few at these sizes. So an element x must
// be within 1e-2·(|x| + s), s = max(1e-3, the tensor's largest |x|): 5x 2^-9 of the largest magnitude
// (on an H100 the largest error seen here was 2.1e-3·s, in dq and dk at T = 512; out and dv 1.2e-3·s;
// lse 1.3e-7·s). The floor 1e-3 covers dq and dk at T = 1, exactly 0 and rounding noise (~1e-6) on
// both sides.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>

#include <cuda_runtime.h>

#include "kernels/attention.h"
#include "kernels/matmul_precision.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaAttention = CudaTest;

struct Tolerance {
  double relative;  // of |x| + s
  double floor;     // s = max(floor, the tensor's largest |x|)
};
constexpr Tolerance kFloat32{2e-5, 1.0};
constexpr Tolerance kBf16Products{1e-2, 1e-3};

struct Dims {
  int64_t batch, seq, heads, head_dim;
  Shape shape() const { return {batch, seq, heads, head_dim}; }
  Shape lse_shape() const { return {batch, heads, seq}; }
  std::string name() const {
    return "B " + std::to_string(batch) + ", T " + std::to_string(seq) + ", H " + std::to_string(heads) + ", d_h " +
           std::to_string(head_dim);
  }
};

// Host inputs of one problem.
struct Inputs {
  Tensor q, k, v, dout;
};

// q, k in [−2, 2] (scores of a few units, so softmax rows are far from uniform); v, dout in [−1, 1].
Inputs random_inputs(const Dims& d, std::mt19937& gen) {
  Tensor q = random_uniform(d.shape(), gen, -2.0f, 2.0f), k = random_uniform(d.shape(), gen, -2.0f, 2.0f);
  return {q, k, random_uniform(d.shape(), gen), random_uniform(d.shape(), gen)};
}

// The same inputs rounded to bf16 (as float32 values).
Inputs rounded_to_bf16(const Inputs& in) {
  return {round_to_bf16(in.q).f32, round_to_bf16(in.k).f32, round_to_bf16(in.v).f32, round_to_bf16(in.dout).f32};
}

// Host tensors of the forward's out, lse and the backward's dq, dk, dv.
struct Results {
  Tensor out, lse, dq, dk, dv;
};

Results nan_results(const Dims& d) {
  return {nan_tensor(d.shape()), nan_tensor(d.lse_shape()), nan_tensor(d.shape()), nan_tensor(d.shape()),
          nan_tensor(d.shape())};
}

// The CPU's results, its backward from its own out and lse.
Results cpu_results(const Inputs& in, const Dims& d) {
  Results r = nan_results(d);
  kernels::attention_forward(in.q, in.k, in.v, r.out, r.lse);
  kernels::attention_backward(in.dout, in.q, in.k, in.v, r.out, r.lse, r.dq, r.dk, r.dv);
  return r;
}

// Where the GPU's inputs lie: in fresh allocations, or in views one element into a buffer (a view may
// start at any element), so not 16-byte aligned.
enum class Placement { kFresh, kOneElementIn };

// A host f32 tensor on the GPU in `dtype` (bf16: rounded to nearest even), placed as `placement` says.
Tensor on_gpu(const Tensor& host, Placement placement = Placement::kFresh, DType dtype = DType::F32) {
  const Tensor values = dtype == DType::BF16 ? round_to_bf16(host).bf16 : host;
  if (placement == Placement::kFresh) return values.copy_to(Device::CUDA);
  const Tensor buffer = Tensor::empty({values.numel() + 1}, dtype, Device::CUDA);
  Tensor view = buffer.slice(1, values.numel() + 1).view(values.shape());
  view.copy_from(values);
  return view;
}

// The GPU's results (NaN-poisoned outputs) on q, k, v, dout given in `inputs`, its backward from
// `saved`'s out and lse when given (the CPU's, so that both sides' gradients start from the same
// values), else from its own.
Results gpu_results(const Inputs& in, const Dims& d, const Results* saved = nullptr,
                    Placement placement = Placement::kFresh, DType inputs = DType::F32) {
  const Tensor q = on_gpu(in.q, placement, inputs), k = on_gpu(in.k, placement, inputs);
  const Tensor v = on_gpu(in.v, placement, inputs), dout = on_gpu(in.dout, placement, inputs);
  const Results poisoned = nan_results(d);
  Tensor out = on_gpu(poisoned.out), lse = on_gpu(poisoned.lse);
  Tensor dq = on_gpu(poisoned.dq), dk = on_gpu(poisoned.dk), dv = on_gpu(poisoned.dv);
  kernels::attention_forward(q, k, v, out, lse);
  const Tensor out_for_backward = saved ? on_gpu(saved->out) : out, lse_for_backward = saved ? on_gpu(saved->lse) : lse;
  kernels::attention_backward(dout, q, k, v, out_for_backward, lse_for_backward, dq, dk, dv);
  return {out.copy_to(Device::CPU), lse.copy_to(Device::CPU), dq.copy_to(Device::CPU), dk.copy_to(Device::CPU),
          dv.copy_to(Device::CPU)};
}

// |gpu − cpu| <= t.relative·(|cpu| + s), s = max(t.floor, the largest |cpu|).
void expect_close_at_scale(const Tensor& gpu, const Tensor& cpu, Tolerance t, const std::string& what) {
  double scale = t.floor;
  for (float x : cpu.to_vector<float>()) scale = std::max(scale, static_cast<double>(std::fabs(x)));
  expect_close(gpu, to_double(cpu), t.relative, t.relative * scale, what);
}

// lse within `lse_tolerance`, the other results within `tolerance`.
void expect_results_close(const Results& gpu, const Results& cpu, Tolerance tolerance, Tolerance lse_tolerance,
                          const std::string& name) {
  expect_close_at_scale(gpu.out, cpu.out, tolerance, "out, " + name);
  expect_close_at_scale(gpu.lse, cpu.lse, lse_tolerance, "lse, " + name);
  expect_close_at_scale(gpu.dq, cpu.dq, tolerance, "dq, " + name);
  expect_close_at_scale(gpu.dk, cpu.dk, tolerance, "dk, " + name);
  expect_close_at_scale(gpu.dv, cpu.dv, tolerance, "dv, " + name);
}

void expect_results_bitwise_equal(const Results& a, const Results& b, const std::string& name) {
  EXPECT_TRUE(bitwise_equal(a.out, b.out)) << "out, " << name;
  EXPECT_TRUE(bitwise_equal(a.lse, b.lse)) << "lse, " << name;
  EXPECT_TRUE(bitwise_equal(a.dq, b.dq)) << "dq, " << name;
  EXPECT_TRUE(bitwise_equal(a.dk, b.dk)) << "dk, " << name;
  EXPECT_TRUE(bitwise_equal(a.dv, b.dv)) << "dv, " << name;
}

TEST_F(CudaAttention, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(77);
  const Dims cases[] = {
      {1, 1, 1, 64},  {2, 1, 3, 128}, {2, 200, 3, 64}, {1, 200, 2, 128}, {1, 64, 2, 128}, {2, 67, 2, 72},
      {1, 130, 1, 1}, {3, 33, 2, 8},  {1, 70, 2, 24},  {1, 100, 2, 256}, {1, 45, 1, 200},
  };
  for (const Dims& d : cases) {
    const Inputs in = random_inputs(d, gen);
    const Results cpu = cpu_results(in, d);
    expect_results_close(gpu_results(in, d, &cpu), cpu, kFloat32, kFloat32, d.name());
  }
}

// Under BF16 the GPU rounds q, k, v, dout itself: its results on the float32 inputs are compared with
// the CPU's on the rounded inputs.
TEST_F(CudaAttention, Bf16TensorCorePathMatchesTheCpuOnRoundedInputs) {
  std::mt19937 gen(79);
  const Dims cases[] = {
      {1, 1, 1, 64},    {2, 1, 3, 128},   {2, 67, 3, 64},   {1, 67, 2, 128}, {2, 200, 3, 64},
      {1, 200, 2, 128}, {1, 512, 2, 64},  {1, 512, 1, 128}, {1, 64, 2, 64},  {1, 65, 1, 64},
      {1, 96, 1, 128},  {1, 129, 1, 128}, {1, 128, 1, 64},  {1, 257, 2, 64}, {2, 300, 1, 128},
  };
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  for (const Dims& d : cases) {
    const Inputs in = random_inputs(d, gen);
    const Results cpu = cpu_results(rounded_to_bf16(in), d);
    expect_results_close(gpu_results(in, d, &cpu), cpu, kBf16Products, kFloat32, "bf16, " + d.name());
  }
}

// The GPU's results on one random problem in each matmul precision.
struct ResultsInBothPrecisions {
  Results float32, bf16;
};
ResultsInBothPrecisions gpu_results_in_both_precisions(const Dims& d, uint32_t seed) {
  std::mt19937 gen(seed);
  const Inputs in = random_inputs(d, gen);
  Results float32 = gpu_results(in, d);
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  return {float32, gpu_results(in, d)};
}

// The tensor-core path is taken: its results are not the float32 kernels'.
// The tensor-core kernels run where the GPU gives a block their shared memory: at head dim 64 (73 KB
// at most) every sm_80+ GPU does; at 128 (136 KB) an H100 or A100 does, an RTX 4090 (99 KB) does not,
// and the attention then takes (and the model writes) f32 q, k, v under bf16 matmuls too.
TEST_F(CudaAttention, TensorCoreKernelsRunWhereTheirSharedMemoryFits) {
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  EXPECT_TRUE(kernels::cuda::tensor_core_attention_fits(64));
  EXPECT_EQ(kernels::attention_operand_dtype(Device::CUDA, 64), DType::BF16);
  const bool wide = kernels::cuda::tensor_core_attention_fits(128);
  EXPECT_EQ(kernels::attention_operand_dtype(Device::CUDA, 128), wide ? DType::BF16 : DType::F32);
  int optin = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), cudaSuccess);
  EXPECT_EQ(wide, optin >= 136 * 1024) << "opt-in shared memory per block: " << optin << " bytes";
}

TEST_F(CudaAttention, Bf16PrecisionChangesTheResult) {
  const ResultsInBothPrecisions r = gpu_results_in_both_precisions({1, 100, 2, 64}, 80);
  EXPECT_FALSE(bitwise_equal(r.bf16.out, r.float32.out));
  EXPECT_FALSE(bitwise_equal(r.bf16.dq, r.float32.dq));
}

// The tensor-core path reads inputs that are not 16-byte aligned float by float, to the same results.
TEST_F(CudaAttention, Bf16PathReadsInputsAtAnyAlignment) {
  std::mt19937 gen(82);
  const Dims d{2, 67, 2, 64};
  const Inputs in = random_inputs(d, gen);
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  expect_results_bitwise_equal(gpu_results(in, d, nullptr, Placement::kOneElementIn), gpu_results(in, d),
                               "bf16, unaligned inputs, " + d.name());
}

// The model gives the tensor-core path bf16 q, k, v, dout (kernels::attention_operand_dtype): the
// results are those of the f32 inputs the path rounds itself, bit for bit, wherever the bf16 inputs
// start (a view off a 16-byte boundary is copied for cp.async).
TEST_F(CudaAttention, Bf16InputsGiveTheResultsOfTheirF32Values) {
  std::mt19937 gen(83);
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  for (const Dims& d : {Dims{2, 67, 2, 64}, Dims{1, 200, 2, 128}}) {
    const Inputs in = random_inputs(d, gen);
    const Results from_f32 = gpu_results(in, d);
    for (Placement placement : {Placement::kFresh, Placement::kOneElementIn})
      expect_results_bitwise_equal(
          gpu_results(in, d, nullptr, placement, DType::BF16), from_f32,
          std::string("bf16 inputs") + (placement == Placement::kFresh ? ", " : ", unaligned, ") + d.name());
  }
}

// With bf16 operands the kernels may write o and dv in bf16 (the model does: their products take
// bf16): the f32 results rounded to nearest even, bit for bit, with lse unchanged. The backward's row
// deltas then read the rounded o, so dq and dk move (within the BF16 tolerance of the CPU), while dv,
// which does not depend on them, is the f32 dv rounded.
TEST_F(CudaAttention, Bf16OutAndDvAreTheF32ResultsRounded) {
  std::mt19937 gen(84);
  const ScopedMatmulPrecision bf16(kernels::MatmulPrecision::BF16);
  for (const Dims& d : {Dims{2, 67, 2, 64}, Dims{1, 200, 2, 128}}) {
    if (kernels::attention_operand_dtype(Device::CUDA, d.head_dim) != DType::BF16) continue;  // d_h 128 on sm_89
    const Inputs in = random_inputs(d, gen);
    const Results f32_outputs = gpu_results(in, d, nullptr, Placement::kFresh, DType::BF16);
    const Tensor q = on_gpu(in.q, Placement::kFresh, DType::BF16), k = on_gpu(in.k, Placement::kFresh, DType::BF16);
    const Tensor v = on_gpu(in.v, Placement::kFresh, DType::BF16);
    const Tensor dout = on_gpu(in.dout, Placement::kFresh, DType::BF16);
    const Results poisoned = nan_results(d);
    Tensor out = on_gpu(poisoned.out, Placement::kFresh, DType::BF16), lse = on_gpu(poisoned.lse);
    Tensor dq = on_gpu(poisoned.dq), dk = on_gpu(poisoned.dk);
    Tensor dv = on_gpu(poisoned.dv, Placement::kFresh, DType::BF16);
    kernels::attention_forward(q, k, v, out, lse);
    kernels::attention_backward(dout, q, k, v, out, lse, dq, dk, dv);
    EXPECT_TRUE(bitwise_equal(out.copy_to(Device::CPU), round_to_bf16(f32_outputs.out).bf16)) << "out, " << d.name();
    EXPECT_TRUE(bitwise_equal(lse.copy_to(Device::CPU), f32_outputs.lse)) << "lse, " << d.name();
    EXPECT_TRUE(bitwise_equal(dv.copy_to(Device::CPU), round_to_bf16(f32_outputs.dv).bf16)) << "dv, " << d.name();
    const Results cpu = cpu_results(rounded_to_bf16(in), d);
    expect_close_at_scale(dq.copy_to(Device::CPU), cpu.dq, kBf16Products, "dq from a bf16 o, " + d.name());
    expect_close_at_scale(dk.copy_to(Device::CPU), cpu.dk, kBf16Products, "dk from a bf16 o, " + d.name());
  }
}

// bf16 inputs only where the tensor-core path runs: the float32 kernels take f32.
TEST_F(CudaAttention, Bf16InputsOutsideTheTensorCorePathAreAnError) {
  const std::pair<kernels::MatmulPrecision, int64_t> cases[] = {{kernels::MatmulPrecision::Float32, 64},
                                                                {kernels::MatmulPrecision::BF16, 72}};
  for (const auto& [precision, head_dim] : cases) {
    const ScopedMatmulPrecision scoped(precision);
    const Dims d{1, 4, 1, head_dim};
    const Tensor x = Tensor::zeros(d.shape(), DType::BF16, Device::CUDA);
    Tensor out = Tensor::empty(d.shape(), DType::F32, Device::CUDA);
    Tensor lse = Tensor::empty(d.lse_shape(), DType::F32, Device::CUDA);
    EXPECT_THROW(kernels::attention_forward(x, x, x, out, lse), Error) << d.name();
  }
}

TEST_F(CudaAttention, TwoRunsAreBitwiseIdentical) {
  std::mt19937 gen(78);
  for (auto precision : {kernels::MatmulPrecision::Float32, kernels::MatmulPrecision::BF16}) {
    const ScopedMatmulPrecision scoped(precision);
    for (int64_t head_dim : {int64_t{64}, int64_t{128}}) {
      const Dims d{2, 300, 4, head_dim};
      const Inputs in = random_inputs(d, gen);
      const std::string name = (precision == kernels::MatmulPrecision::BF16 ? "bf16, " : "float32, ") + d.name();
      expect_results_bitwise_equal(gpu_results(in, d), gpu_results(in, d), name);
    }
  }
}

// Head dims without a tensor-core instance run the float32 kernels under BF16 too.
TEST_F(CudaAttention, Bf16FallsBackToFloat32ForOtherHeadDims) {
  const Dims d{2, 67, 2, 72};
  const ResultsInBothPrecisions r = gpu_results_in_both_precisions(d, 81);
  expect_results_bitwise_equal(r.bf16, r.float32, "bf16 fallback, " + d.name());
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
