// Token compression and Engram n-gram hashing on the GPU, the CUDA side of kernels/ngram_hash.h:
// the CPU's integer arithmetic (wrapping u64 products, XOR, modulo), one thread per token.
#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/ngram_hash.h"

namespace engram::kernels::cuda {

namespace {

__global__ void compress_kernel(const int32_t* ids, const int32_t* table, int64_t vocab, int32_t* out, int64_t n,
                                unsigned long long* bad_id) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      report_bad_position(bad_id, i);
      continue;
    }
    out[i] = table[ids[i]];
  }
}

// rows[b,t,(n−2)·heads+j] = offsets[..] + (XOR_{k<n} ids_c[b,t−k]·m_k) mod primes[..] (pad_c before t = 0).
__global__ void ngram_hash_kernel(const int32_t* ids, int64_t t_count, int64_t pad_c, const int64_t* m_bits,
                                  const int64_t* primes, const int64_t* offsets, int max_ngram, int heads,
                                  int64_t* rows, int64_t tokens, unsigned long long* bad_id) {
  const int64_t n_heads = int64_t{max_ngram - 1} * heads;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < tokens; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i % t_count;
    const int32_t* row_ids = ids + (i - t);
    if (row_ids[t] < 0) {
      report_bad_position(bad_id, i);
      continue;
    }
    int64_t* dst = rows + i * n_heads;
    uint64_t mix = 0;  // mix_n = mix_{n−1} XOR x'_{t−n+1}·m_{n−1}
    for (int k = 0; k < max_ngram; ++k) {
      const int64_t x = t - k >= 0 ? row_ids[t - k] : pad_c;
      mix ^= static_cast<uint64_t>(x) * static_cast<uint64_t>(m_bits[k]);
      if (k == 0) continue;
      for (int j = 0; j < heads; ++j) {
        const int64_t h = int64_t{k - 1} * heads + j;
        dst[h] = offsets[h] + static_cast<int64_t>(mix % static_cast<uint64_t>(primes[h]));
      }
    }
  }
}

}  // namespace

void compress_ids(const Tensor& ids, const Tensor& compress, Tensor& out) {
  check_on_cuda("compress_ids", ids, compress, out);
  checks::compress_ids(ids, compress, out);
  const int64_t vocab = compress.numel(), n = ids.numel();
  if (n == 0) return;
  FirstBadPosition bad_id;
  compress_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(ids.data<int32_t>(), compress.data<int32_t>(), vocab,
                                                                   out.data<int32_t>(), n, bad_id.slot());
  EG_CUDA_CHECK_LAUNCH("compress_kernel");
  const int64_t i = bad_id.position();
  EG_CHECK(i < 0, "token id ", integer_at(ids, i), " at position ", i, " is outside the vocabulary [0, ", vocab, ")");
}

void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, Tensor& rows) {
  check_on_cuda("ngram_hash", ids_c, multipliers, primes, offsets, rows);
  checks::ngram_hash(ids_c, pad_c, multipliers, primes, offsets, max_ngram, heads, rows);
  const int64_t t_count = ids_c.dim(1);
  // primes ≥ 1 is the host's invariant (engram_primes); a 0 here would be a modulo by zero on the device.
  for (int64_t p : primes.to_vector<int64_t>()) EG_ASSERT(p >= 1, "ngram_hash: prime ", p);
  const int64_t tokens = ids_c.numel();
  if (tokens == 0) return;
  FirstBadPosition bad_id;
  ngram_hash_kernel<<<grid_for(tokens), kThreads, 0, compute_stream()>>>(
      ids_c.data<int32_t>(), t_count, pad_c, multipliers.data<int64_t>(), primes.data<int64_t>(),
      offsets.data<int64_t>(), max_ngram, heads, rows.data<int64_t>(), tokens, bad_id.slot());
  EG_CUDA_CHECK_LAUNCH("ngram_hash_kernel");
  const int64_t i = bad_id.position();
  EG_CHECK(i < 0, "ngram_hash: compressed id ", integer_at(ids_c, i), " at [", i / t_count, ", ", i % t_count,
           "] is negative");
}

}  // namespace engram::kernels::cuda
