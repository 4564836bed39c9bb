// stable_key_order (runtime/key_order.h) against std::stable_sort of the positions by key: random
// keys with many repeats, key bounds on both sides of the 11-bit digit edges and far past them, empty
// and single inputs; keys outside [0, key_bound) are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/error.h"
#include "runtime/key_order.h"

namespace engram {
namespace {

std::vector<int64_t> reference_order(const std::vector<int64_t>& keys) {
  std::vector<int64_t> order(keys.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  return order;
}

TEST(StableKeyOrder, EqualsAStableSortOfThePositionsByKey) {
  std::mt19937_64 gen(3);
  for (const int64_t bound :
       {int64_t{1}, int64_t{2}, int64_t{2047}, int64_t{2048}, int64_t{2049}, int64_t{1} << 22, int64_t{3} << 40}) {
    for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{70000}}) {
      SCOPED_TRACE("bound " + std::to_string(bound) + ", n " + std::to_string(n));
      // Draws from a few hundred distinct keys (repeats, as table ids have), and the bound's edges.
      std::vector<int64_t> pool{0, bound - 1};
      for (int i = 0; i < 300; ++i) pool.push_back(static_cast<int64_t>(gen() % static_cast<uint64_t>(bound)));
      std::vector<int64_t> keys(n);
      for (int64_t& k : keys) k = pool[gen() % pool.size()];
      const Tensor order = stable_key_order(keys.data(), n, bound);
      ASSERT_EQ(order.numel(), n);
      EXPECT_EQ(order.to_vector<int64_t>(), reference_order(keys));
    }
  }
}

TEST(StableKeyOrder, RefusesKeysOutsideTheBound) {
  const std::vector<int64_t> keys{3, 9, 2};
  EXPECT_THROW(stable_key_order(keys.data(), 3, 9), Error);
  const std::vector<int64_t> negative{3, -1};
  EXPECT_THROW(stable_key_order(negative.data(), 2, 9), Error);
}

}  // namespace
}  // namespace engram
