#include "kernels/ngram_hash.h"

#include <algorithm>
#include <limits>
#include <unordered_set>

#include "kernels/checks.h"

#include "runtime/rng.h"

namespace engram::kernels {

namespace {

uint64_t mul_mod(uint64_t a, uint64_t b, uint64_t m) {
  return static_cast<uint64_t>(static_cast<unsigned __int128>(a) * b % m);
}

uint64_t pow_mod(uint64_t base, uint64_t exp, uint64_t m) {
  uint64_t result = 1 % m;
  base %= m;
  for (; exp > 0; exp >>= 1) {
    if (exp & 1) result = mul_mod(result, base, m);
    base = mul_mod(base, base, m);
  }
  return result;
}

}  // namespace

// Miller-Rabin with the first 12 primes as bases is deterministic for every n < 2^64.
bool is_prime(int64_t n) {
  if (n < 2) return false;
  constexpr uint64_t kBases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
  const uint64_t u = static_cast<uint64_t>(n);
  for (uint64_t p : kBases) {
    if (u % p == 0) return u == p;
  }
  uint64_t d = u - 1;
  int r = 0;
  for (; d % 2 == 0; d /= 2) ++r;
  for (uint64_t a : kBases) {
    uint64_t x = pow_mod(a, d, u);
    if (x == 1 || x == u - 1) continue;
    bool composite = true;
    for (int i = 1; i < r && composite; ++i) {
      x = mul_mod(x, x, u);
      composite = x != u - 1;
    }
    if (composite) return false;
  }
  return true;
}

std::vector<uint64_t> engram_multipliers(uint64_t seed, int layer, int64_t vocab_compressed, int max_ngram) {
  EG_CHECK(vocab_compressed >= 1, "engram: compressed vocabulary size V' = ", vocab_compressed, " must be >= 1");
  EG_CHECK(max_ngram >= 1, "engram: max_ngram = ", max_ngram, " must be >= 1");
  EG_CHECK(layer >= 0, "engram: layer index ", layer, " must be >= 0");
  // m_k <= 2·half_bound − 1 < ⌊(2^63−1)/V'⌋, so x'·m_k < 2^63 for every x' < V'.
  const uint64_t max_i63 = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  const uint64_t half_bound = std::max<uint64_t>(1, max_i63 / static_cast<uint64_t>(vocab_compressed) / 2);
  uint64_t state = seed + 10007ULL * static_cast<uint64_t>(layer);
  std::vector<uint64_t> m(max_ngram);
  for (uint64_t& mk : m) mk = 2 * (splitmix64_next(state) % half_bound) + 1;
  return m;
}

std::vector<std::vector<int64_t>> engram_primes(int n_engram_layers, int max_ngram, int heads,
                                                const std::vector<int64_t>& table_size) {
  EG_CHECK(n_engram_layers >= 0, "engram: ", n_engram_layers, " Engram layers");
  EG_CHECK(max_ngram >= 2, "engram: max_ngram = ", max_ngram, " must be >= 2");
  EG_CHECK(heads >= 1, "engram: heads_per_ngram = ", heads, " must be >= 1");
  EG_CHECK(static_cast<int>(table_size.size()) == max_ngram - 1, "engram: table_size has ", table_size.size(),
           " entries, expected one per order n = 2..", max_ngram, " (", max_ngram - 1, ")");
  for (size_t i = 0; i < table_size.size(); ++i)
    EG_CHECK(table_size[i] >= 1, "engram: table_size[", i, "] = ", table_size[i], " must be >= 1");
  // Walk layers, then orders, then heads; each head takes the smallest unused prime above its start.
  std::unordered_set<int64_t> used;
  std::vector<std::vector<int64_t>> primes(n_engram_layers);
  for (auto& layer_primes : primes) {
    for (int n = 2; n <= max_ngram; ++n) {
      int64_t start = table_size[n - 2] - 1;
      for (int j = 0; j < heads; ++j) {
        int64_t p = start + 1;
        while (used.count(p) || !is_prime(p)) ++p;
        used.insert(p);
        layer_primes.push_back(p);
        start = p;
      }
    }
  }
  return primes;
}

std::vector<int64_t> prefix_offsets(const std::vector<int64_t>& primes) {
  std::vector<int64_t> off(primes.size());
  int64_t sum = 0;
  for (size_t i = 0; i < primes.size(); ++i) {
    off[i] = sum;
    sum += primes[i];
  }
  return off;
}

namespace cpu {

void compress_ids(const Tensor& ids, const Tensor& compress, Tensor& out) {
  checks::compress_ids(ids, compress, out);
  const int64_t vocab = compress.numel();
  const int32_t* in = ids.data<int32_t>();
  const int32_t* table = compress.data<int32_t>();
  int32_t* dst = out.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    EG_CHECK(in[i] >= 0 && in[i] < vocab, "token id ", in[i], " at position ", i, " is outside the vocabulary [0, ",
             vocab, ")");
    dst[i] = table[in[i]];
  }
}

void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, Tensor& rows) {
  checks::ngram_hash(ids_c, pad_c, multipliers, primes, offsets, max_ngram, heads, rows);
  const int64_t b_count = ids_c.dim(0), t_count = ids_c.dim(1), n_heads = (max_ngram - 1) * heads;
  const int32_t* ids = ids_c.data<int32_t>();
  const int64_t* m_bits = multipliers.data<int64_t>();
  const int64_t* p = primes.data<int64_t>();
  const int64_t* off = offsets.data<int64_t>();
  int64_t* out = rows.data<int64_t>();
  for (int64_t h = 0; h < n_heads; ++h) EG_ASSERT(p[h] >= 1, "ngram_hash: prime ", p[h], " of head ", h);

  for (int64_t b = 0; b < b_count; ++b) {
    const int32_t* row_ids = ids + b * t_count;
    for (int64_t t = 0; t < t_count; ++t) {
      EG_CHECK(row_ids[t] >= 0, "ngram_hash: compressed id ", row_ids[t], " at [", b, ", ", t, "] is negative");
      int64_t* dst = out + (b * t_count + t) * n_heads;
      // mix_n = mix_{n−1} XOR x'_{t−n+1}·m_{n−1}, starting from mix_1 = x'_t·m_0.
      uint64_t mix = 0;
      for (int k = 0; k < max_ngram; ++k) {
        const int64_t x = t - k >= 0 ? row_ids[t - k] : pad_c;
        mix ^= static_cast<uint64_t>(x) * static_cast<uint64_t>(m_bits[k]);
        if (k == 0) continue;
        for (int j = 0; j < heads; ++j) {
          const int64_t h = (k - 1) * heads + j;
          dst[h] = off[h] + static_cast<int64_t>(mix % static_cast<uint64_t>(p[h]));
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace engram::kernels
