// The caching host allocator: blocks are reused within a size class, statistics add up, and the
// cache stays bounded by twice the peak in use (sizes that change every step must not pile up);
// over the bound, the block cache returns the classes asked for least recently first, and a
// released block itself only when nothing else can go.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <vector>

#include "runtime/allocator.h"
#include "runtime/caching_allocator.h"
#include "runtime/error.h"
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
    EXPECT_LE(s.cached, 2 * s.peak_in_use) << "after step " << i;
  }
  EXPECT_LT(host_memory_stats().cached, 3 * (1000000 + 199 * 50000));
}

// A BlockCache over malloc that records what it returns to its source, and a source that runs out
// past `source_limit` bytes outstanding (raw blocks held by the cache or its users).
std::vector<void*> returned;
std::map<void*, size_t> outstanding;
size_t source_limit = SIZE_MAX;
size_t outstanding_bytes() {
  size_t total = 0;
  for (const auto& [ptr, bytes] : outstanding) total += bytes;
  return total;
}
void* limited_malloc(size_t bytes) {
  if (outstanding_bytes() + bytes > source_limit) return nullptr;
  void* ptr = std::malloc(bytes);
  outstanding[ptr] = bytes;
  return ptr;
}
void recorded_free(void* ptr) {
  returned.push_back(ptr);
  outstanding.erase(ptr);
  std::free(ptr);
}

class BlockCacheOrder : public ::testing::Test {
 protected:
  void SetUp() override {
    returned.clear();
    source_limit = SIZE_MAX;
  }
  void TearDown() override { cache.empty_cache(); }
  BlockCache cache{"test", limited_malloc, recorded_free};
};

TEST_F(BlockCacheOrder, OverTheBoundTheLeastRecentlyAskedForClassesGoFirst) {
  constexpr size_t kA = 1 << 20, kB = 5 << 18, kC = 3 << 19, kD = 2 << 20;  // four classes
  void* a = cache.allocate(kA);
  void* b = cache.allocate(kB);
  cache.release(a, kA);
  cache.release(b, kB);  // peak a + b; cached a + b
  void* c = cache.allocate(kC);
  cache.release(c, kC);  // cached a + b + c <= 2 (a + b)
  EXPECT_TRUE(returned.empty());
  void* d = cache.allocate(kD);
  cache.release(d, kD);  // a + b + c + d is over 2 (a + b): a, then b (the oldest) go; d stays
  EXPECT_EQ(returned, (std::vector<void*>{a, b}));
  EXPECT_EQ(cache.stats().cached, kC + kD);
  EXPECT_EQ(cache.stats().returned_blocks, 2u);
  EXPECT_EQ(cache.allocate(kD), d);  // still cached
  cache.release(d, kD);
}

TEST_F(BlockCacheOrder, AReleasedBlockIsReturnedOnlyWhenNoOtherClassCanGo) {
  constexpr size_t kSize = 1 << 20;
  void* x = cache.allocate(kSize);
  void* y = cache.allocate(kSize);
  void* z = cache.allocate(kSize);
  cache.release(x, kSize);
  cache.release(y, kSize);
  cache.reset_peak();  // peak = in use = z: the bound is now 2 blocks, and 2 are cached
  cache.release(z, kSize);
  EXPECT_EQ(returned, (std::vector<void*>{z}));
  EXPECT_EQ(cache.stats().cached, 2 * kSize);
  EXPECT_EQ(cache.stats().returned_blocks, 1u);
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

TEST_F(BlockCacheOrder, OutOfMemoryReturnsTheLeastRecentlyAskedForClassesOneAtATime) {
  constexpr size_t kA = 1 << 20, kB = 5 << 18, kC = 3 << 19;  // three classes, 3.75 MiB together
  void* a = cache.allocate(kA);
  void* b = cache.allocate(kB);
  void* c = cache.allocate(kC);
  cache.release(c, kC);
  cache.release(b, kB);
  cache.release(a, kA);                     // all three cached; asked for in the order a, b, c (releases do not count)
  constexpr size_t kD = 7 << 18;            // a fourth class, 1.75 MiB
  source_limit = kA + kB + kC + (3 << 18);  // room for 0.75 MiB more
  void* d = cache.allocate(kD);             // needs a's 1 MiB returned, and nothing else
  EXPECT_NE(d, nullptr);
  EXPECT_EQ(returned, (std::vector<void*>{a}));
  EXPECT_EQ(cache.stats().cached, kB + kC);
  cache.release(d, kD);
  source_limit = 0;  // nothing more from the source: once nothing is cached, the error names the memory
  EXPECT_THROW(cache.allocate(8 << 20), Error);
}

}  // namespace
}  // namespace engram
