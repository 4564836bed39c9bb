#pragma once
// Engram n-gram hashing (MODEL.md §4.2). The host functions build each layer's hash plan (all
// integer arithmetic, identical on every backend); ngram_hash maps compressed token ids to
// global table rows.
#include <cstdint>
#include <vector>

#include "kernels/dispatch.h"

namespace engram::kernels {

// half_bound = max(1, ⌊⌊(2^63−1)/V'⌋ / 2⌋); m_k = 2·(u_k mod half_bound) + 1, k = 0..max_ngram−1,
// u_k successive SplitMix64 outputs from state seed + 10007·layer.
std::vector<uint64_t> engram_multipliers(uint64_t seed, int layer, int64_t vocab_compressed, int max_ngram);
// Model-wide unique primes: result[i][(n−2)·heads + j] for the i-th Engram layer (in config
// order), order n = 2..max_ngram, head j. table_size[n−2] = S_n.
std::vector<std::vector<int64_t>> engram_primes(int n_engram_layers, int max_ngram, int heads,
                                                const std::vector<int64_t>& table_size);
// off[i] = Σ_{i' < i} primes[i'] (exclusive prefix sum).
std::vector<int64_t> prefix_offsets(const std::vector<int64_t>& primes);
bool is_prime(int64_t n);

namespace cpu {
// out[i] = compress[ids[i]] (i32 everywhere; ids checked in [0, V)).
void compress_ids(const Tensor& ids, const Tensor& compress, Tensor& out);
// ids_c i32 [B, T] (compressed); multipliers i64 [max_ngram] (bit pattern of the u64 values);
// primes, offsets i64 [(max_ngram−1)·heads]; rows i64 [B, T, (max_ngram−1)·heads] written:
// rows[b,t,(n−2)·heads+j] = offsets[..] + (XOR_{k<n} ids_c[b,t−k]·m_k) mod primes[..], with
// pad_c in place of positions t−k < 0 (per row of the batch).
void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, Tensor& rows);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/ngram_hash.cu, the contracts of cpu:: above
void compress_ids(const Tensor& ids, const Tensor& compress, Tensor& out);
void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, Tensor& rows);
}  // namespace cuda
#endif
EG_KERNEL(compress_ids)
EG_KERNEL(ngram_hash)
}  // namespace engram::kernels
