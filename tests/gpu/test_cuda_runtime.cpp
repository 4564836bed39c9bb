// The CUDA runtime: host <-> device round trips, device copies and zero fill, the caching device
// allocator's statistics, and CUDA errors reported as engram::Error naming the failed call.
#include <gtest/gtest.h>

#include <random>

#include "runtime/allocator.h"
#include "runtime/cuda/check.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaRuntime = CudaTest;
using CudaAllocator = CudaTest;

// Needs no device: without one cudaSetDevice fails too (no device or no driver), just differently.
TEST(CudaErrors, AFailedCallThrowsNamingTheCall) {
  expect_error([] { EG_CUDA_CHECK(cudaSetDevice(1 << 20)); }, {"CUDA call cudaSetDevice(1 << 20) failed", "cudaError"});
}

TEST_F(CudaRuntime, EveryDtypeSurvivesAHostDeviceRoundTripBitForBit) {
  std::mt19937 gen(1);
  const Tensor f32 = random_normal({3, 37}, gen);
  const Tensor i32 = random_ids<int32_t>({101}, 1 << 30, gen);
  const Tensor i64 = random_ids<int64_t>({5, 7}, int64_t{1} << 40, gen);
  const Tensor bf16 = round_to_bf16(random_normal({17}, gen)).bf16;
  for (const Tensor& host : {f32, i32, i64, bf16}) {
    const Tensor device = host.copy_to(Device::CUDA);
    EXPECT_EQ(device.device(), Device::CUDA);
    EXPECT_EQ(device.shape(), host.shape());
    EXPECT_TRUE(bitwise_equal(device.copy_to(Device::CPU), host)) << host.describe();
  }
}

// to(device) is the tensor itself where it already lives (shared storage), a copy elsewhere.
TEST(TensorTo, SameDeviceSharesOtherDeviceCopies) {
  std::mt19937 gen(3);
  const Tensor host = random_normal({4, 5}, gen);
  EXPECT_EQ(host.to(Device::CPU).raw(), host.raw());
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: the cross-device half needs one";
  const Tensor device = host.to(Device::CUDA);
  EXPECT_EQ(device.device(), Device::CUDA);
  EXPECT_EQ(device.to(Device::CUDA).raw(), device.raw());
  const Tensor back = device.to(Device::CPU);
  EXPECT_NE(back.raw(), host.raw());
  EXPECT_TRUE(bitwise_equal(back, host));
}

TEST_F(CudaRuntime, DeviceCopiesSlicesAndZerosAreExact) {
  std::mt19937 gen(2);
  const Tensor host = random_normal({9, 13}, gen);
  const Tensor device = host.copy_to(Device::CUDA);
  Tensor copy = device.clone();  // device to device
  EXPECT_EQ(copy.device(), Device::CUDA);
  EXPECT_TRUE(bitwise_equal(copy.copy_to(Device::CPU), host));
  // A dim-0 slice of a device tensor copies just its rows.
  EXPECT_TRUE(bitwise_equal(device.slice(3, 7).copy_to(Device::CPU), host.slice(3, 7).clone()));
  // copy_from into a device slice writes those rows only.
  const Tensor rows = random_normal({2, 13}, gen);
  Tensor target = copy.slice(4, 6);
  target.copy_from(rows);
  const std::vector<float> after = copy.to_vector<float>();
  for (int64_t r = 0; r < 9; ++r)
    for (int64_t c = 0; c < 13; ++c) {
      const float want = (r == 4 || r == 5) ? rows.data<float>()[(r - 4) * 13 + c] : host.data<float>()[r * 13 + c];
      ASSERT_EQ(after[r * 13 + c], want) << "row " << r << " column " << c;
    }
  Tensor zeros = Tensor::zeros({1001}, DType::F32, Device::CUDA);
  for (float v : zeros.to_vector<float>()) ASSERT_EQ(v, 0.0f);
  copy.zero_();
  for (float v : copy.to_vector<float>()) ASSERT_EQ(v, 0.0f);
}

TEST_F(CudaAllocator, StatisticsCountLiveBlocksAndThePeak) {
  Tensor warm_up = Tensor::empty({1}, DType::F32, Device::CUDA);  // the context exists before we measure
  device_empty_cache();
  device_reset_peak();
  const MemoryStats before = device_memory_stats();
  {
    Tensor a = Tensor::empty({1000}, DType::F32, Device::CUDA);          // 4000 bytes
    Tensor b = Tensor::empty({300, 1000}, DType::F32, Device::CUDA);     // 1.2 MB
    const MemoryStats during = device_memory_stats();
    // Each block is its size class: at least the request, at most a quarter more (or 64-byte rounding).
    EXPECT_GE(during.in_use - before.in_use, 4000u + 1200000u);
    EXPECT_LE(during.in_use - before.in_use, 4096u + 1200000u * 5 / 4);
    EXPECT_EQ(during.peak_in_use, during.in_use);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.raw()) % 256, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % 256, 0u);
  }
  const MemoryStats after = device_memory_stats();
  EXPECT_EQ(after.in_use, before.in_use);
  EXPECT_GE(after.peak_in_use, before.in_use + 4000u + 1200000u);  // the peak stays until reset
  EXPECT_GT(after.cached, before.cached);                          // freed blocks are kept
  device_reset_peak();
  EXPECT_EQ(device_memory_stats().peak_in_use, before.in_use);
  device_empty_cache();
  EXPECT_EQ(device_memory_stats().cached, 0u);
}

TEST_F(CudaAllocator, AFreedBlockIsReusedForTheSameSizeClass) {
  void* first = nullptr;
  {
    Tensor t = Tensor::empty({25000}, DType::F32, Device::CUDA);  // 100000 bytes
    first = t.raw();
  }
  Tensor again = Tensor::empty({24750}, DType::F32, Device::CUDA);  // 99000 bytes: the same class
  EXPECT_EQ(again.raw(), first);
}

TEST_F(CudaAllocator, AnImpossibleAllocationIsAClearError) {
  expect_error([] { Tensor::empty({int64_t{1} << 50}, DType::F32, Device::CUDA); },
               {"out of device memory allocating", "bytes"});
}

}  // namespace
}  // namespace engram
