// CPU kernel micro-benchmarks at sizes of the tiny/small CPU configs.
//   build/benchmarks/bench_kernels [--benchmark_filter=attention]
#include <benchmark/benchmark.h>

#include <memory>
#include <random>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/ngram_hash.h"
#include "kernels/rmsnorm.h"
#include "parallel/communicator.h"
#include "parallel/sharded_table.h"

namespace engram {
namespace {

Tensor random_tensor(const Shape& shape, uint32_t seed) {
  Tensor t = Tensor::empty(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}

Tensor random_ids(const Shape& shape, int64_t high, uint32_t seed, DType dtype = DType::I32) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, high - 1);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::I32) t.data<int32_t>()[i] = static_cast<int32_t>(dist(rng));
    else t.data<int64_t>()[i] = dist(rng);
  }
  return t;
}

void BM_gemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  Tensor a = random_tensor({n, n}, 1), b = random_tensor({n, n}, 2), c = Tensor::empty({n, n});
  for (auto _ : state) kernels::gemm(a, false, b, true, c);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_gemm)->Arg(256)->Arg(512)->Unit(benchmark::kMillisecond);

// A branch's output product joining the residual stream (small.pbtxt's W_o: 2048 tokens, d_model 512):
// arg 0 the product, then an out-of-place add; arg 1 gemm_plus, which adds the residual as it writes.
void BM_output_product_onto_residual(benchmark::State& state) {
  const int64_t n = 2048, d = 512;
  const Tensor o = random_tensor({n, d}, 1), w = random_tensor({d, d}, 2), residual = random_tensor({n, d}, 3);
  Tensor y = Tensor::empty({n, d}), sum = Tensor::empty({n, d});
  const bool plus = state.range(0) == 1;
  state.SetLabel(plus ? "gemm_plus" : "gemm, add");
  for (auto _ : state) {
    if (plus) {
      kernels::gemm_plus(o, false, w, true, residual, sum);
    } else {
      kernels::gemm(o, false, w, true, y);
      kernels::add(residual, y, sum);
    }
  }
}
BENCHMARK(BM_output_product_onto_residual)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

void BM_attention_fwd_bwd(benchmark::State& state) {
  const int64_t B = 2, T = state.range(0), H = 4, dh = 64;
  Tensor q = random_tensor({B, T, H, dh}, 1), k = random_tensor({B, T, H, dh}, 2), v = random_tensor({B, T, H, dh}, 3);
  Tensor o = Tensor::empty({B, T, H, dh}), lse = Tensor::empty({B, H, T});
  Tensor dq = Tensor::empty(q.shape()), dk = Tensor::empty(q.shape()), dv = Tensor::empty(q.shape());
  Tensor dout = random_tensor({B, T, H, dh}, 4);
  for (auto _ : state) {
    kernels::attention_forward(q, k, v, o, lse);
    kernels::attention_backward(dout, q, k, v, o, lse, dq, dk, dv);
  }
  state.SetItemsProcessed(state.iterations() * B * T);
}
BENCHMARK(BM_attention_fwd_bwd)->Arg(128)->Arg(256)->Unit(benchmark::kMillisecond);

void BM_rmsnorm_fwd_bwd(benchmark::State& state) {
  const int64_t N = 4096, D = 256;
  Tensor x = random_tensor({N, D}, 1), g = random_tensor({D}, 2), y = Tensor::empty({N, D}), rstd = Tensor::empty({N});
  Tensor dy = random_tensor({N, D}, 3), dx = Tensor::empty({N, D}), dg = Tensor::zeros({D});
  for (auto _ : state) {
    kernels::rmsnorm_forward(x, g, 1e-6f, y, rstd);
    kernels::rmsnorm_backward(dy, x, g, rstd, dx, dg);
  }
  state.SetBytesProcessed(state.iterations() * 5 * N * D * 4);
}
BENCHMARK(BM_rmsnorm_fwd_bwd)->Unit(benchmark::kMicrosecond);

void BM_cross_entropy(benchmark::State& state) {
  const int64_t N = 2048, V = state.range(0);
  Tensor logits = random_tensor({N, V}, 1), targets = random_ids({N}, V, 2);
  Tensor losses = Tensor::empty({N}), dlogits = Tensor::empty({N, V});
  for (auto _ : state) kernels::cross_entropy_forward_backward(logits, targets, 1.0f / N, losses, dlogits);
  state.SetBytesProcessed(state.iterations() * 2 * N * V * 4);
}
BENCHMARK(BM_cross_entropy)->Arg(8192)->Unit(benchmark::kMillisecond);

void BM_ngram_hash(benchmark::State& state) {
  const int64_t B = 8, T = 256, N = 3, K = 8, Vc = 6000;
  auto mult = kernels::engram_multipliers(0, 1, Vc, N);
  auto primes = kernels::engram_primes(1, N, K, {50000, 50000})[0];
  auto offsets = kernels::prefix_offsets(primes);
  Tensor m = Tensor::from_vector(std::vector<int64_t>(mult.begin(), mult.end()), {N});
  Tensor p = Tensor::from_vector(primes, {(N - 1) * K}), off = Tensor::from_vector(offsets, {(N - 1) * K});
  Tensor ids = random_ids({B, T}, Vc, 3), rows = Tensor::empty({B, T, (N - 1) * K}, DType::I64);
  for (auto _ : state) kernels::ngram_hash(ids, 0, m, p, off, N, K, rows);
  state.SetItemsProcessed(state.iterations() * B * T);
}
BENCHMARK(BM_ngram_hash)->Unit(benchmark::kMicrosecond);

void BM_table_gather_and_reduce_rows(benchmark::State& state) {
  const int64_t rows = 800000, d_e = 32, lookups = 8 * 256 * 16;
  Tensor table = random_tensor({rows, d_e}, 1), ids = random_ids({lookups}, rows, 2, DType::I64);
  Tensor out = Tensor::empty({lookups, d_e}), dout = random_tensor({lookups, d_e}, 3);
  for (auto _ : state) {
    kernels::embedding_gather(table, ids, out);
    RowGrads g = kernels::reduce_rows(dout, ids);
    benchmark::DoNotOptimize(g.rows.raw());
  }
  state.SetItemsProcessed(state.iterations() * lookups);
}
BENCHMARK(BM_table_gather_and_reduce_rows)->Unit(benchmark::kMillisecond);

// A sharded table's lookup and backward on one rank (the host index work of every rank of a
// distributed run: deduplicating the ids, then reducing the gradients per row) at the GPU benchmark's
// size: 16,384 tokens × 16 heads of one Engram layer over ≈ 3.2M rows of width 32.
void BM_sharded_table_lookup_and_backward(benchmark::State& state) {
  const int64_t rows = 3200000, width = 32, lookups = 16384 * 16;
  const std::unique_ptr<Communicator> one_rank = make_local_communicator();
  ShardedTable table(*one_rank, rows, width);
  Tensor shard = random_tensor({rows, width}, 1), ids = random_ids({lookups}, rows, 2, DType::I64);
  Tensor out = Tensor::empty({lookups, width}), dout = random_tensor({lookups, width}, 3);
  table.backward(table.lookup(shard, ids, out), dout);  // warm: the allocator's blocks exist, as in training
  for (auto _ : state) {
    const TableRouting routing = table.lookup(shard, ids, out);
    RowGrads g = table.backward(routing, dout);
    benchmark::DoNotOptimize(g.rows.raw());
  }
  state.SetItemsProcessed(state.iterations() * lookups);
}
BENCHMARK(BM_sharded_table_lookup_and_backward)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace engram
