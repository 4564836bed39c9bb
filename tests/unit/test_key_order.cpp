// stable_key_order (runtime/key_order.h) against std::stable_sort of the positions by key: random
// keys with many repeats, largest keys on both sides of the 11-bit digit edges and far past them,
// empty and single inputs; keys outside [0, max_key] are refused.
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
  for (const int64_t max_key : {int64_t{0}, int64_t{1}, int64_t{2046}, int64_t{2047}, int64_t{2048},
                                (int64_t{1} << 22) - 1, (int64_t{3} << 40) - 1}) {
    const int64_t bound = max_key + 1;
    for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{70000}}) {
      SCOPED_TRACE("max_key " + std::to_string(max_key) + ", n " + std::to_string(n));
      // Draws from a few hundred distinct keys (repeats, as table ids have), and the range's edges.
      std::vector<int64_t> pool{0, max_key};
      for (int i = 0; i < 300; ++i) pool.push_back(static_cast<int64_t>(gen() % static_cast<uint64_t>(bound)));
      std::vector<int64_t> keys(n);
      for (int64_t& k : keys) k = pool[gen() % pool.size()];
      const Tensor order = stable_key_order(keys.data(), n, max_key);
      ASSERT_EQ(order.numel(), n);
      EXPECT_EQ(order.to_vector<int64_t>(), reference_order(keys));
    }
  }
}

TEST(StableKeyOrder, RefusesKeysOutsideTheBound) {
  const std::vector<int64_t> keys{3, 9, 2};
  EXPECT_THROW(stable_key_order(keys.data(), 3, 8), Error);
  const std::vector<int64_t> negative{3, -1};
  EXPECT_THROW(stable_key_order(negative.data(), 2, 8), Error);
}

}  // namespace
}  // namespace engram
