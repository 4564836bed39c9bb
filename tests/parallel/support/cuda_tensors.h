#pragma once
// For the parallel tests that pass CUDA tensors to the collectives, the dispatcher and the sharded
// table and compare with the same calls on CPU tensors: every rank of the test (several may share
// one GPU) skips them where no CUDA device is there, or where the build has no CUDA backend.
#include <gtest/gtest.h>

#include <string>

#include "tests/test_util.h"

#ifdef ENGRAM_HAVE_CUDA
#include "runtime/cuda/device.h"
#endif

namespace engram::testing_util {

// Why a test that needs a GPU cannot run here; empty where it can.
inline std::string why_no_cuda() {
#ifdef ENGRAM_HAVE_CUDA
  return cuda_device_count() == 0 ? "no CUDA device; these tests run on a GPU machine" : "";
#else
  return "this build has no CUDA backend";
#endif
}

class CudaTensorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = why_no_cuda(); !why.empty()) GTEST_SKIP() << why;
  }
};

// A result of CUDA tensors: on the device, with the bits of the same call on CPU tensors.
inline void expect_cuda_with_cpu_bits(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  EXPECT_EQ(gpu.device(), Device::CUDA) << what;
  EXPECT_TRUE(bitwise_equal(gpu.copy_to(Device::CPU), cpu)) << what << ": differs from the CPU run";
}

}  // namespace engram::testing_util
