// The caching host allocator: blocks are reused within a size class, statistics add up, and the
// cache stays bounded by the peak in use (sizes that change every step must not pile up).
#include <gtest/gtest.h>

#include <vector>

#include "runtime/allocator.h"
#include "runtime/tensor.h"

namespace engram {
namespace {

class HostAllocator : public ::testing::Test {
 protected:
  void SetUp() override { host_empty_cache(); }
};

TEST_F(HostAllocator, ReusesAFreedBlockOfTheSameClass) {
  void* a = host_allocate(100000);
  host_release(a, 100000);
  void* b = host_allocate(99000);  // same size class as 100000 bytes
  EXPECT_EQ(a, b);
  host_release(b, 99000);
  void* c = host_allocate(300000);  // another class: a fresh block
  EXPECT_NE(a, c);
  host_release(c, 300000);
}

TEST_F(HostAllocator, BlocksAreAlignedAndStatisticsAddUp) {
  const HostMemoryStats before = host_memory_stats();
  void* a = host_allocate(1000);
  void* b = host_allocate(70000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  const HostMemoryStats during = host_memory_stats();
  // Each block is its class: at least the request, at most a quarter more (or 64-byte rounding).
  EXPECT_GE(during.in_use - before.in_use, 71000u);
  EXPECT_LE(during.in_use - before.in_use, 1024u + 70000u * 5 / 4);
  EXPECT_GE(during.peak_in_use, during.in_use);
  host_release(a, 1000);
  host_release(b, 70000);
  EXPECT_EQ(host_memory_stats().in_use, before.in_use);
}

TEST_F(HostAllocator, CacheStaysBoundedBySizesThatChangeEveryStep) {
  host_reset_peak();
  // A "step" allocating one buffer whose size grows each time, as the unique table rows do.
  for (size_t i = 0; i < 200; ++i) {
    const size_t bytes = 1000000 + i * 50000;
    void* p = host_allocate(bytes);
    host_release(p, bytes);
    const HostMemoryStats s = host_memory_stats();
    EXPECT_LE(s.cached, s.peak_in_use) << "after step " << i;
  }
  EXPECT_LT(host_memory_stats().cached, 2 * (1000000 + 199 * 50000));
}

TEST_F(HostAllocator, TensorsGoThroughIt) {
  const size_t in_use = host_memory_stats().in_use;
  {
    Tensor t = Tensor::zeros({1000, 100});
    EXPECT_GE(host_memory_stats().in_use, in_use + t.nbytes());
  }
  EXPECT_EQ(host_memory_stats().in_use, in_use);
  host_empty_cache();
  EXPECT_EQ(host_memory_stats().cached, 0u);
}

}  // namespace
}  // namespace engram
