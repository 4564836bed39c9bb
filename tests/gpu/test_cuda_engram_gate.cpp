// CUDA Engram gate against the CPU one, forward and backward, on odd widths (one below the block
// size, several above) with NaN-poisoned outputs and rows chosen for the gate's branches: s = 0,
// 0 < |s| <= 1e-6 (clamped: no score gradient), and large |s| of both signs (α saturating); the
// shared argument checks; bitwise repeats.
// Tolerances: both sides reduce the row dot products in double (only the order differs) and round
// once, so score differs by at most an ulp (rtol 1e-6; atol 1e-9 for scores near 0). α goes through
// the GPU's expf, within 2 ulp of glibc's, and at the saturated rows (|z| ≈ 25 at D = 2048) an ulp
// of s moves exp(|z|) by ~1e-6 relative: α, u rtol 2e-6. The backward runs on the CPU's saved
// score and α on both sides, so dv = α·du is one identical product (bitwise), and dq, dk differ only
// by the rounding of ∂L/∂<q̂, k̂> (rtol 1e-6; atol 1e-12 for saturated rows, whose gradient is tiny).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "kernels/engram_gate.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaEngramGate = CudaTest;

// Random q̂, k̂ in [−1, 1) with special rows (when there are enough): row 0 q = 0 (s = 0); row 1
// <q̂, k̂> = 1e-8 (0 < |s| <= 1e-6, clamped); rows 2 and 3 k = ±40·q (|s| ≈ 13·√D: α within 1e-4
// of 1 and of 0 at D = 67, and 1 exactly at D = 2048).
struct GateInputs {
  Tensor q, k;
};
GateInputs gate_inputs(int64_t n, int64_t d, std::mt19937& gen) {
  GateInputs in{random_uniform({n, d}, gen), random_uniform({n, d}, gen)};
  if (n < 4) return in;
  float* q = in.q.data<float>();
  float* k = in.k.data<float>();
  std::fill_n(q, d, 0.0f);
  std::fill_n(q + d, d, 0.0f);
  q[d] = 1e-4f;
  k[d] = 1e-4f;  // <q, k> = 1e-8
  for (int64_t c = 0; c < d; ++c) {
    k[2 * d + c] = 40.0f * q[2 * d + c];
    k[3 * d + c] = -40.0f * q[3 * d + c];
  }
  return in;
}

// gate_inputs with random v and du, all on the device.
struct DeviceGateInputs {
  Tensor q, k, v, du;
};
DeviceGateInputs device_gate_inputs(int64_t n, int64_t d, std::mt19937& gen) {
  const GateInputs in = gate_inputs(n, d, gen);
  return {in.q.copy_to(Device::CUDA), in.k.copy_to(Device::CUDA), random_uniform({n, d}, gen).copy_to(Device::CUDA),
          random_uniform({n, d}, gen).copy_to(Device::CUDA)};
}

TEST_F(CudaEngramGate, ForwardAndBackwardMatchTheCpu) {
  std::mt19937 gen(71);
  const int64_t sizes[][2] = {{1, 1}, {37, 67}, {5, 255}, {16, 768}, {9, 1031}, {300, 2048}};
  for (const auto& size : sizes) {
    const int64_t n = size[0], d = size[1];
    const std::string what = ", N " + std::to_string(n) + " D " + std::to_string(d);
    const GateInputs in = gate_inputs(n, d, gen);
    const HostDevice q = on_both(in.q), k = on_both(in.k), v = random_on_both({n, d}, gen);
    HostDevice score = nan_on_both({n}), alpha = nan_on_both({n}), u = nan_on_both({n, d});
    kernels::engram_gate_forward(q.cpu, k.cpu, v.cpu, score.cpu, alpha.cpu, u.cpu);
    kernels::engram_gate_forward(q.gpu, k.gpu, v.gpu, score.gpu, alpha.gpu, u.gpu);
    expect_close_to_cpu(score.gpu, score.cpu, 1e-6, 1e-9, "score" + what);
    expect_close_to_cpu(alpha.gpu, alpha.cpu, 2e-6, 0.0, "alpha" + what);
    expect_close_to_cpu(u.gpu, u.cpu, 2e-6, 1e-9, "u" + what);

    const HostDevice saved_score = on_both(score.cpu), saved_alpha = on_both(alpha.cpu);
    const HostDevice du = random_on_both({n, d}, gen);
    HostDevice dq = nan_on_both({n, d}), dk = nan_on_both({n, d}), dv = nan_on_both({n, d});
    kernels::engram_gate_backward(du.cpu, q.cpu, k.cpu, v.cpu, saved_score.cpu, saved_alpha.cpu, dq.cpu, dk.cpu,
                                  dv.cpu);
    kernels::engram_gate_backward(du.gpu, q.gpu, k.gpu, v.gpu, saved_score.gpu, saved_alpha.gpu, dq.gpu, dk.gpu,
                                  dv.gpu);
    expect_close_to_cpu(dq.gpu, dq.cpu, 1e-6, 1e-12, "dq" + what);
    expect_close_to_cpu(dk.gpu, dk.cpu, 1e-6, 1e-12, "dk" + what);
    expect_bitwise_equal_to_cpu(dv.gpu, dv.cpu, "dv" + what);
  }
}

TEST_F(CudaEngramGate, ClampedScoresHaveNoScoreGradient) {
  // The GPU's own forward feeds its backward: rows 0 (s = 0) and 1 (s = 1e-8/√D) take the clamp.
  std::mt19937 gen(72);
  const int64_t n = 6, d = 67;
  const auto [q, k, v, du] = device_gate_inputs(n, d, gen);
  Tensor score = Tensor::empty({n}, DType::F32, Device::CUDA), alpha = Tensor::empty({n}, DType::F32, Device::CUDA);
  Tensor u = Tensor::empty({n, d}, DType::F32, Device::CUDA);
  kernels::engram_gate_forward(q, k, v, score, alpha, u);
  const Tensor host_score = score.copy_to(Device::CPU), host_alpha = alpha.copy_to(Device::CPU);
  EXPECT_EQ(host_score.data<float>()[0], 0.0f);
  EXPECT_EQ(host_alpha.data<float>()[0], 0.5f);
  ASSERT_GT(std::fabs(host_score.data<float>()[1]), 0.0f);
  ASSERT_LE(std::fabs(host_score.data<float>()[1]), 1e-6f);

  Tensor dq = nan_tensor({n, d}).copy_to(Device::CUDA), dk = nan_tensor({n, d}).copy_to(Device::CUDA);
  Tensor dv = nan_tensor({n, d}).copy_to(Device::CUDA);
  kernels::engram_gate_backward(du, q, k, v, score, alpha, dq, dk, dv);
  const Tensor host_dq = dq.copy_to(Device::CPU), host_dk = dk.copy_to(Device::CPU);
  for (int64_t i = 0; i < 2 * d; ++i) {
    EXPECT_EQ(host_dq.data<float>()[i], 0.0f) << i;
    EXPECT_EQ(host_dk.data<float>()[i], 0.0f) << i;
  }
  double unclamped = 0.0;  // row 4, an ordinary score, for contrast
  for (int64_t c = 0; c < d; ++c) unclamped += std::fabs(host_dq.data<float>()[4 * d + c]);
  EXPECT_GT(unclamped, 0.0);
  const Tensor host_dv = dv.copy_to(Device::CPU), host_du = du.copy_to(Device::CPU);
  for (int64_t i = 0; i < n * d; ++i)
    EXPECT_EQ(host_dv.data<float>()[i], host_alpha.data<float>()[i / d] * host_du.data<float>()[i]) << i;
}

TEST_F(CudaEngramGate, RepeatsBitwise) {
  std::mt19937 gen(73);
  const int64_t n = 257, d = 1031;
  const auto [q, k, v, du] = device_gate_inputs(n, d, gen);
  Tensor outputs[2][6];  // per run: score, alpha, u, dq, dk, dv
  for (auto& o : outputs) {
    o[0] = Tensor::empty({n}, DType::F32, Device::CUDA);
    o[1] = Tensor::empty({n}, DType::F32, Device::CUDA);
    for (int j = 2; j < 6; ++j) o[j] = Tensor::empty({n, d}, DType::F32, Device::CUDA);
    kernels::engram_gate_forward(q, k, v, o[0], o[1], o[2]);
    kernels::engram_gate_backward(du, q, k, v, o[0], o[1], o[3], o[4], o[5]);
  }
  const char* names[] = {"score", "alpha", "u", "dq", "dk", "dv"};
  for (int j = 0; j < 6; ++j)
    EXPECT_TRUE(bitwise_equal(outputs[0][j].copy_to(Device::CPU), outputs[1][j].copy_to(Device::CPU))) << names[j];
}

TEST_F(CudaEngramGate, RejectsWhatTheCpuRejects) {
  const Tensor q = Tensor::zeros({3, 4}, DType::F32, Device::CUDA);
  const Tensor k_short = Tensor::zeros({2, 4}, DType::F32, Device::CUDA);
  Tensor score = Tensor::zeros({3}, DType::F32, Device::CUDA), alpha = Tensor::zeros({3}, DType::F32, Device::CUDA);
  Tensor u = Tensor::zeros({3, 4}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::engram_gate_forward(q, k_short, q, score, alpha, u); },
               {"engram_gate_forward kn", "is not [3, 4]"});
  Tensor alpha_short = Tensor::zeros({2}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::engram_gate_forward(q, q, q, score, alpha_short, u); },
               {"engram_gate_forward alpha", "needs 3 elements"});
}

}  // namespace
}  // namespace engram
