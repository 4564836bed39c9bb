// CUDA token compression and n-gram hashing against the CPU ones: integer arithmetic, so the rows
// must be identical; an unknown token id is the CPU's error.
#include <gtest/gtest.h>

#include <random>

#include "kernels/ngram_hash.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaNgramHash = CudaTest;

TEST_F(CudaNgramHash, CompressIdsMatchesTheCpu) {
  std::mt19937 gen(71);
  const HostDevice compress = on_both(random_ids<int32_t>({1009}, 400, gen));
  const HostDevice ids = on_both(random_ids<int32_t>({5, 77}, 1009, gen));
  HostDevice out = on_both(poisoned_ids<int32_t>({5, 77}));
  kernels::compress_ids(ids.cpu, compress.cpu, out.cpu);
  kernels::compress_ids(ids.gpu, compress.gpu, out.gpu);
  expect_bitwise_equal_to_cpu(out.gpu, out.cpu, "compress_ids");

  const Tensor bad = Tensor::from_vector<int32_t>({3, 1009}, {2}).copy_to(Device::CUDA);
  Tensor bad_out = Tensor::empty({2}, DType::I32, Device::CUDA);
  expect_error([&] { kernels::compress_ids(bad, compress.gpu, bad_out); },
               {"token id 1009 at position 1 is outside the vocabulary [0, 1009)"});
}

TEST_F(CudaNgramHash, HashMatchesTheCpu) {
  std::mt19937 gen(72);
  const int max_ngram = 3, heads = 4;
  const int64_t vocab_c = 5003;
  const std::vector<uint64_t> m = kernels::engram_multipliers(/*seed=*/7, /*layer=*/1, vocab_c, max_ngram);
  const std::vector<int64_t> primes = kernels::engram_primes(1, max_ngram, heads, {1009, 2003})[0];
  const std::vector<int64_t> m_bits(m.begin(), m.end());
  const HostDevice multipliers = on_both(Tensor::from_vector(m_bits, {max_ngram}));
  const HostDevice primes_t = on_both(Tensor::from_vector(primes, {(max_ngram - 1) * heads}));
  const HostDevice offsets = on_both(Tensor::from_vector(kernels::prefix_offsets(primes), {(max_ngram - 1) * heads}));
  const HostDevice ids = on_both(random_ids<int32_t>({3, 41}, vocab_c, gen));
  HostDevice rows = on_both(poisoned_ids<int64_t>({3, 41, (max_ngram - 1) * heads}));
  kernels::ngram_hash(ids.cpu, /*pad_c=*/2, multipliers.cpu, primes_t.cpu, offsets.cpu, max_ngram, heads, rows.cpu);
  kernels::ngram_hash(ids.gpu, /*pad_c=*/2, multipliers.gpu, primes_t.gpu, offsets.gpu, max_ngram, heads, rows.gpu);
  expect_bitwise_equal_to_cpu(rows.gpu, rows.cpu, "ngram_hash rows");
}

}  // namespace
}  // namespace engram
