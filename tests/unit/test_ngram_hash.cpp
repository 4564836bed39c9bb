// Engram hashing (MODEL.md §4.2): multipliers, primes, offsets, compression and the n-gram hash,
// each against an independent re-implementation in this file.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "kernels/ngram_hash.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

// Reference SplitMix64 (Steele, Lea & Flood) with its standard constants.
uint64_t reference_splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

TEST(NgramHash, ReferenceSplitMixMatchesItsPublishedFirstOutput) {
  uint64_t state = 0;
  EXPECT_EQ(reference_splitmix64(state), 0xE220A8397B1DCDAFULL);
}

TEST(NgramHash, MultipliersFollowTheSpecAndCannotOverflow) {
  const uint64_t seeds[] = {0, 1, 12345, ~0ULL};
  const int64_t vocabs[] = {1, 2, 3, 1000, 129280, (1 << 24) - 1, 1 << 24};
  for (uint64_t seed : seeds) {
    for (int layer : {0, 1, 15}) {
      for (int64_t vocab : vocabs) {
        for (int max_ngram : {2, 3, 5}) {
          const std::vector<uint64_t> m = kernels::engram_multipliers(seed, layer, vocab, max_ngram);
          ASSERT_EQ(m.size(), static_cast<size_t>(max_ngram));
          const uint64_t half_bound = std::max<uint64_t>(1, ((uint64_t{1} << 63) - 1) / vocab / 2);
          uint64_t state = seed + 10007ULL * layer;
          for (int k = 0; k < max_ngram; ++k) {
            const uint64_t u = reference_splitmix64(state);
            ASSERT_EQ(m[k], 2 * (u % half_bound) + 1) << "k " << k << " V' " << vocab;
            ASSERT_EQ(m[k] % 2, 1u);
            const unsigned __int128 product = static_cast<unsigned __int128>(vocab - 1) * m[k];
            ASSERT_LT(product, static_cast<unsigned __int128>(1) << 63) << "V' " << vocab << " m " << m[k];
          }
        }
      }
    }
  }
}

TEST(NgramHash, MultipliersDependOnTheModelLayerIndex) {
  EXPECT_NE(kernels::engram_multipliers(0, 1, 1000, 3), kernels::engram_multipliers(0, 15, 1000, 3));
  EXPECT_EQ(kernels::engram_multipliers(10007, 0, 1000, 3), kernels::engram_multipliers(0, 1, 1000, 3));
}

TEST(NgramHash, IsPrimeAgreesWithTrialDivision) {
  for (int64_t n = -3; n < 20000; ++n) ASSERT_EQ(kernels::is_prime(n), naive_is_prime(n)) << n;
  std::mt19937_64 gen(1);
  std::uniform_int_distribution<int64_t> dist(int64_t{1} << 32, int64_t{1} << 40);
  for (int i = 0; i < 60; ++i) {
    const int64_t n = dist(gen) | 1;
    ASSERT_EQ(kernels::is_prime(n), naive_is_prime(n)) << n;
  }
  // Known primes and strong pseudoprimes / Carmichael numbers that fool weaker tests.
  for (int64_t p : {int64_t{2147483647}, int64_t{1000000000039}, (int64_t{1} << 61) - 1}) EXPECT_TRUE(kernels::is_prime(p)) << p;
  for (int64_t c : {int64_t{561}, int64_t{41041}, int64_t{3215031751}, int64_t{3825123056546413051}})
    EXPECT_FALSE(kernels::is_prime(c)) << c;
}

TEST(NgramHash, PrimesReproduceTheModelExample) {
  // MODEL.md §4.2: S = 646400 for both orders, layers [1, 15], K = 8.
  const auto primes = kernels::engram_primes(2, 3, 8, {646400, 646400});
  ASSERT_EQ(primes.size(), 2u);
  ASSERT_EQ(primes[0].size(), 16u);
  const std::vector<int64_t> layer1_n2(primes[0].begin(), primes[0].begin() + 8);
  EXPECT_EQ(layer1_n2, (std::vector<int64_t>{646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523}));
  EXPECT_EQ(primes[0][8], 646537);
}

// Checks model-wide uniqueness and that every prime is the smallest unused prime above its start.
void check_prime_walk(int n_layers, int max_ngram, int heads, const std::vector<int64_t>& sizes) {
  const auto primes = kernels::engram_primes(n_layers, max_ngram, heads, sizes);
  ASSERT_EQ(primes.size(), static_cast<size_t>(n_layers));
  std::set<int64_t> used;
  for (int l = 0; l < n_layers; ++l) {
    ASSERT_EQ(primes[l].size(), static_cast<size_t>((max_ngram - 1) * heads));
    for (int n = 2; n <= max_ngram; ++n) {
      for (int j = 0; j < heads; ++j) {
        const size_t h = (n - 2) * heads + j;
        const int64_t start = j == 0 ? sizes[n - 2] - 1 : primes[l][h - 1];
        const int64_t p = primes[l][h];
        ASSERT_GT(p, start);
        ASSERT_TRUE(naive_is_prime(p)) << p;
        ASSERT_FALSE(used.count(p)) << "prime " << p << " reused at layer " << l << " n " << n << " j " << j;
        for (int64_t q = start + 1; q < p; ++q)
          ASSERT_TRUE(!naive_is_prime(q) || used.count(q)) << "skipped unused prime " << q;
        used.insert(p);
      }
    }
  }
}

TEST(NgramHash, PrimesAreModelWideUniqueAndSmallestUnused) {
  check_prime_walk(2, 3, 8, {646400, 646400});
  check_prime_walk(3, 4, 3, {100, 50, 7});  // small, overlapping ranges: later heads must skip used primes
  check_prime_walk(1, 2, 1, {1});           // start 0: the first prime is 2
  check_prime_walk(4, 3, 5, {1000, 1000});
}

TEST(NgramHash, PrefixOffsetsAreExclusiveSums) {
  EXPECT_EQ(kernels::prefix_offsets({}), std::vector<int64_t>{});
  EXPECT_EQ(kernels::prefix_offsets({7}), std::vector<int64_t>{0});
  const auto primes = kernels::engram_primes(2, 3, 8, {646400, 646400});
  const std::vector<int64_t> off = kernels::prefix_offsets(primes[1]);
  int64_t sum = 0;
  for (size_t i = 0; i < primes[1].size(); ++i) {
    EXPECT_EQ(off[i], sum);
    sum += primes[1][i];
  }
}

TEST(NgramHash, CompressIdsMatchesNaiveAndRejectsUnknownIds) {
  std::mt19937 gen(2);
  const int32_t vocab = 37;
  const Tensor table = random_ids<int32_t>({vocab}, 12, gen), ids = random_ids<int32_t>({3, 13}, vocab, gen);
  Tensor out = poisoned_ids<int32_t>({3, 13});
  kernels::compress_ids(ids, table, out);
  const std::vector<int32_t> compressed = table.to_vector<int32_t>(), id = ids.to_vector<int32_t>();
  for (size_t i = 0; i < id.size(); ++i) ASSERT_EQ(out.data<int32_t>()[i], compressed[id[i]]);
  Tensor bad = Tensor::from_vector<int32_t>({0, vocab}, {2});
  Tensor out2 = Tensor::empty({2}, DType::I32);
  EXPECT_THROW(kernels::compress_ids(bad, table, out2), Error);
}

struct HashPlan {
  std::vector<uint64_t> m;
  std::vector<int64_t> primes, offsets;
};

HashPlan make_plan(int layer, int64_t vocab, int max_ngram, int heads, const std::vector<int64_t>& sizes) {
  HashPlan plan;
  plan.m = kernels::engram_multipliers(0, layer, vocab, max_ngram);
  plan.primes = kernels::engram_primes(1, max_ngram, heads, sizes)[0];
  plan.offsets = kernels::prefix_offsets(plan.primes);
  return plan;
}

Tensor run_hash(const std::vector<int32_t>& ids, int64_t b, int64_t t, int64_t pad, const HashPlan& plan,
                int max_ngram, int heads) {
  const int64_t n_heads = (max_ngram - 1) * heads;
  Tensor rows = poisoned_ids<int64_t>({b, t, n_heads});
  std::vector<int64_t> m_bits(plan.m.begin(), plan.m.end());
  kernels::ngram_hash(Tensor::from_vector(ids, {b, t}), pad, Tensor::from_vector(m_bits, {max_ngram}),
                      Tensor::from_vector(plan.primes, {n_heads}), Tensor::from_vector(plan.offsets, {n_heads}),
                      max_ngram, heads, rows);
  return rows;
}

TEST(NgramHash, HashMatchesNaiveWithPaddingPerRow) {
  std::mt19937 gen(3);
  const int64_t shapes[][2] = {{3, 13}, {1, 1}, {2, 2}, {5, 33}};
  for (const auto& s : shapes) {
    for (int max_ngram : {2, 3, 4}) {
      for (int heads : {1, 3}) {
        for (int64_t vocab : {int64_t{1000}, int64_t{1} << 24}) {
          const int64_t b = s[0], t = s[1], n_heads = (max_ngram - 1) * heads;
          const std::vector<int64_t> sizes = {97, 646400, 13};
          const HashPlan plan = make_plan(1, vocab, max_ngram, heads,
                                          std::vector<int64_t>(sizes.begin(), sizes.begin() + max_ngram - 1));
          std::uniform_int_distribution<int64_t> id_dist(vocab - 50, vocab - 1);  // large ids stress the products
          std::vector<int32_t> ids(b * t);
          for (int32_t& id : ids) id = static_cast<int32_t>(id_dist(gen));
          const int64_t pad = vocab - 1 - 7;
          const Tensor rows = run_hash(ids, b, t, pad, plan, max_ngram, heads);
          const int64_t* got = rows.data<int64_t>();
          for (int64_t bi = 0; bi < b; ++bi) {
            for (int64_t ti = 0; ti < t; ++ti) {
              for (int n = 2; n <= max_ngram; ++n) {
                uint64_t mix = 0;
                for (int k = 0; k < n; ++k) {
                  const uint64_t x = ti - k >= 0 ? static_cast<uint64_t>(ids[bi * t + ti - k]) : pad;
                  mix ^= x * plan.m[k];
                }
                for (int j = 0; j < heads; ++j) {
                  const int64_t h = (n - 2) * heads + j;
                  const int64_t want = plan.offsets[h] + static_cast<int64_t>(mix % plan.primes[h]);
                  const int64_t row = got[(bi * t + ti) * n_heads + h];
                  ASSERT_EQ(row, want) << "b " << bi << " t " << ti << " n " << n << " j " << j;
                  ASSERT_GE(row, plan.offsets[h]);
                  ASSERT_LT(row, plan.offsets[h] + plan.primes[h]);
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(NgramHash, RowsOfTheBatchAreIndependent) {
  // The first positions of row 1 hash against the pad, never against the end of row 0.
  const int max_ngram = 3, heads = 2;
  const HashPlan plan = make_plan(0, 500, max_ngram, heads, {101, 103});
  std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8};
  const Tensor a = run_hash(ids, 2, 4, 9, plan, max_ngram, heads);
  ids[2] = 300;
  ids[3] = 301;
  const Tensor b = run_hash(ids, 2, 4, 9, plan, max_ngram, heads);
  const int64_t row_elems = 4 * (max_ngram - 1) * heads;
  for (int64_t i = row_elems; i < 2 * row_elems; ++i) EXPECT_EQ(a.data<int64_t>()[i], b.data<int64_t>()[i]);
  // ...and the pad does matter there.
  const Tensor c = run_hash(ids, 2, 4, 10, plan, max_ngram, heads);
  const int64_t n_heads = (max_ngram - 1) * heads;
  int differing = 0;
  for (int64_t h = 0; h < n_heads; ++h) differing += c.data<int64_t>()[row_elems + h] != b.data<int64_t>()[row_elems + h];
  EXPECT_GT(differing, 0);
}

}  // namespace
}  // namespace engram
