#pragma once
// Helpers of the GPU suite (tests/gpu): a fixture that skips without a CUDA device, host/device
// copies of the same random input, NaN-poisoned device outputs, and comparisons of a device result
// with the CPU reference's.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/matmul_precision.h"
#include "runtime/cuda/device.h"
#include "tests/test_util.h"

namespace engram::testing_util {

// Every GPU test derives from this: on a machine without a device (CI, the CPU machine) each test
// reports SKIPPED with the reason instead of failing. cuda_device_count asks CUDA once per process.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0)
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount found none); the gpu suite runs on a GPU machine";
  }
};

// Sets the process-wide matmul precision for one scope, then restores the library default (Float32).
struct ScopedMatmulPrecision {
  explicit ScopedMatmulPrecision(kernels::MatmulPrecision p) { kernels::set_matmul_precision(p); }
  ~ScopedMatmulPrecision() { kernels::set_matmul_precision(kernels::MatmulPrecision::Float32); }
  ScopedMatmulPrecision(const ScopedMatmulPrecision&) = delete;
  ScopedMatmulPrecision& operator=(const ScopedMatmulPrecision&) = delete;
};

// The same tensor on the host and on the device.
struct HostDevice {
  Tensor cpu, gpu;
};
inline HostDevice on_both(const Tensor& host) { return {host, host.copy_to(Device::CUDA)}; }
inline HostDevice random_on_both(const Shape& shape, std::mt19937& gen, float lo = -1.0f, float hi = 1.0f) {
  return on_both(random_uniform(shape, gen, lo, hi));
}
// NaN everywhere on both: an output element a kernel fails to write stays NaN and fails the comparison.
inline HostDevice nan_on_both(const Shape& shape) { return on_both(nan_tensor(shape)); }

// The device result against the CPU one: |gpu − cpu| <= atol + rtol·|cpu| everywhere (NaN never passes).
inline void expect_close_to_cpu(const Tensor& gpu, const Tensor& cpu, double rtol, double atol, const std::string& what,
                                std::source_location where = std::source_location::current()) {
  expect_close(gpu.copy_to(Device::CPU), to_double(cpu), rtol, atol, what, where);
}

// The device result equals the CPU one byte for byte.
inline void expect_bitwise_equal_to_cpu(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  EXPECT_TRUE(bitwise_equal(gpu.copy_to(Device::CPU), cpu)) << what << ": device result differs from the CPU's";
}

// Two device results (two runs of the same kernels) hold the same bytes.
inline bool device_bitwise_equal(const Tensor& a, const Tensor& b) {
  return bitwise_equal(a.copy_to(Device::CPU), b.copy_to(Device::CPU));
}

}  // namespace engram::testing_util
