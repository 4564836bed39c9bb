// The expert-parallel token dispatcher on 1, 2 and 4 ranks. Every rank builds the same global batch
// (uneven token counts per rank, one rank with no tokens, random routing with experts that get no
// tokens and tokens whose K experts all live on one rank) and runs its own slice.
//   - identity experts: y = x·Σw, dx = dy·Σw, d_topk_w[t,k] = <dy_t, x_t>; the rows each expert sees
//     are exactly its tokens in (source rank, token) order; traffic counters match the routing;
//   - per-expert linear maps, for every EP dividing the world: the distributed y, dx, d_topk_w and
//     expert gradients (summed over the expert-data-parallel group) equal one rank computing the whole
//     batch (norm-wise relative error ≤ 1e-6), which itself matches a naive double-precision reference;
//   - onto a given output: the combine adds to what it holds (and a wrongly shaped one is refused);
//   - with a CUDA device, bf16 rows travel as they are (half the bytes), y bitwise the CPU's on their values;
//   - with a CUDA device, CUDA tensors (staged through host copies by the host communicator): y, dx,
//     the expert rows and the traffic equal the CPU run's bit for bit; d_topk_w within one float
//     rounding (its dot products are summed in double by kernels::combine_expert_outputs_backward,
//     in an order the CPU and CUDA kernels do not share).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <set>

#include "kernels/gemm.h"
#include "parallel/moe_dispatcher.h"
#include "tests/parallel/support/cuda_tensors.h"
#include "tests/parallel/support/mpi_test_env.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using testing_util::prefix;
using testing_util::world;

struct RoutingCase {
  int64_t n_experts, top_k, d_model, max_tokens_per_rank;
  std::set<int> unused_experts;  // never routed to
};

// The same global batch on every rank.
struct Batch {
  std::vector<int64_t> tokens_per_rank;
  Tensor x, topk_w, dy;           // [N, D], [N, K], [N, D]
  std::vector<int32_t> topk_idx;  // [N·K]
  int64_t n() const { return x.dim(0); }
};

// Distinct experts per token, slots in random order; every third token takes all its experts from
// one expert-parallel rank's block when it can.
std::vector<int32_t> random_routing(int64_t n, const RoutingCase& s, int ep, std::mt19937& gen) {
  std::vector<int32_t> allowed;
  for (int e = 0; e < s.n_experts; ++e)
    if (!s.unused_experts.count(e)) allowed.push_back(e);
  const int64_t per_rank = s.n_experts / ep;
  std::vector<int32_t> idx;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int32_t> pool;
    if (t % 3 == 0) {
      const int64_t block = (t / 3) % ep;
      for (int32_t e : allowed)
        if (e / per_rank == block) pool.push_back(e);
    }
    if (static_cast<int64_t>(pool.size()) < s.top_k) pool = allowed;
    std::shuffle(pool.begin(), pool.end(), gen);
    idx.insert(idx.end(), pool.begin(), pool.begin() + s.top_k);
  }
  return idx;
}

Batch make_batch(const RoutingCase& s, int ranks, int ep, uint32_t seed) {
  std::mt19937 gen(seed);
  Batch b;
  b.tokens_per_rank = testing_util::uneven_split(ranks, gen, s.max_tokens_per_rank);
  const int64_t n = prefix(b.tokens_per_rank, ranks);
  b.x = testing_util::random_uniform({n, s.d_model}, gen);
  for (int64_t t = 0; t < n; ++t) b.x.data<float>()[t * s.d_model] = static_cast<float>(t) + 0.25f;  // a tag
  b.topk_w = testing_util::random_uniform({n, s.top_k}, gen, 0.1f, 1.0f);
  b.dy = testing_util::random_uniform({n, s.d_model}, gen);
  b.topk_idx = random_routing(n, s, ep, gen);
  return b;
}

// Rows [begin, begin + count) of a global tensor, as a tensor of its own.
Tensor rows_of(const Tensor& t, int64_t begin, int64_t count) {
  return t.slice(begin, begin + count).clone();
}

Tensor idx_rows(const Batch& b, int64_t begin, int64_t count, int64_t k) {
  return Tensor::from_vector(
      std::vector<int32_t>(b.topk_idx.begin() + begin * k, b.topk_idx.begin() + (begin + count) * k),
      {count, k});
}

// One rank's tokens of the batch: rows [begin, begin + n).
struct RankTokens {
  int64_t begin, n;
  Tensor x, w, dy, idx;
};
RankTokens tokens_of(const Batch& b, const RoutingCase& s, int rank) {
  const int64_t begin = prefix(b.tokens_per_rank, rank), n = b.tokens_per_rank[rank];
  return {begin, n, rows_of(b.x, begin, n), rows_of(b.topk_w, begin, n), rows_of(b.dy, begin, n),
          idx_rows(b, begin, n, s.top_k)};
}

const std::vector<RoutingCase> kCases = {
    {8, 2, 13, 9, {1, 6}},      // two experts that never get a token
    {12, 3, 7, 17, {6, 7, 8}},  // on 4 ranks, rank 2 holds only unused experts
    {4, 1, 5, 33, {}},          // top-1
};

TEST(ExpertDispatcher, IdentityExpertsRoundTrip) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  for (size_t si = 0; si < kCases.size(); ++si) {
    const RoutingCase& s = kCases[si];
    SCOPED_TRACE("setup " + std::to_string(si));
    const Batch b = make_batch(s, p, p, 100 + si);
    const RankTokens tokens = tokens_of(b, s, me);
    const int64_t k = s.top_k, d = s.d_model, n = tokens.n;
    const Tensor &x = tokens.x, &w = tokens.w, &dy = tokens.dy, &idx = tokens.idx;

    ExpertDispatcher dispatcher(comm, s.n_experts);
    const IndexRange mine = dispatcher.local_experts();
    int forward_calls = 0, backward_calls = 0;
    const Tensor y =
        dispatcher.forward(x, idx, w, [&](const Tensor& rows, const std::vector<int64_t>& offsets) {
          ++forward_calls;
          // Each local expert's block holds exactly its tokens, ascending global token = (source, token).
          EXPECT_EQ(static_cast<int64_t>(offsets.size()), mine.size() + 1);
          for (int64_t i = 0; i < mine.size(); ++i) {
            std::vector<int64_t> expected_tokens, got_tokens;
            for (int64_t t = 0; t < b.n(); ++t)
              for (int64_t slot = 0; slot < k; ++slot)
                if (b.topk_idx[t * k + slot] == mine.begin + i) expected_tokens.push_back(t);
            for (int64_t r = offsets[i]; r < offsets[i + 1]; ++r)
              got_tokens.push_back(static_cast<int64_t>(rows.data<float>()[r * d]));
            EXPECT_EQ(got_tokens, expected_tokens) << "local expert " << i;
          }
          return rows.clone();
        });
    EXPECT_EQ(forward_calls, 1);
    ASSERT_EQ(y.shape(), (Shape{n, d}));
    std::vector<double> expected_y(n * d), expected_dx(n * d), expected_dw(n * k);
    for (int64_t t = 0; t < n; ++t) {
      double sum_w = 0.0, dot = 0.0;
      for (int64_t slot = 0; slot < k; ++slot) sum_w += w.data<float>()[t * k + slot];
      for (int64_t j = 0; j < d; ++j) {
        expected_y[t * d + j] = x.data<float>()[t * d + j] * sum_w;
        expected_dx[t * d + j] = dy.data<float>()[t * d + j] * sum_w;
        dot += static_cast<double>(dy.data<float>()[t * d + j]) * x.data<float>()[t * d + j];
      }
      for (int64_t slot = 0; slot < k; ++slot) expected_dw[t * k + slot] = dot;
    }
    testing_util::expect_close(y, expected_y, 1e-6, 1e-6, "y = x·Σw");

    const ExpertDispatcher::Grads g =
        dispatcher.backward(dy, [&](const Tensor& d_out, const std::vector<int64_t>&) {
          ++backward_calls;
          return d_out.clone();
        });
    EXPECT_EQ(backward_calls, 1);
    testing_util::expect_close(g.dx, expected_dx, 1e-6, 1e-6, "dx = dy·Σw");
    testing_util::expect_close(g.d_topk_w, expected_dw, 1e-6, 1e-6, "d_topk_w = <dy, x>");

    // Traffic: one row per (token, destination rank), one output per assignment, to and from others.
    const int64_t per_rank = s.n_experts / p;
    int64_t tokens_out = 0, tokens_in = 0, outputs_out = 0, outputs_in = 0;
    for (int src = 0; src < p; ++src) {
      for (int64_t t = prefix(b.tokens_per_rank, src); t < prefix(b.tokens_per_rank, src + 1); ++t) {
        std::set<int> dests;
        for (int64_t slot = 0; slot < k; ++slot) dests.insert(b.topk_idx[t * k + slot] / per_rank);
        for (int dst : dests) {
          if (dst == src) continue;
          tokens_out += (src == me);
          tokens_in += (dst == me);
        }
        for (int64_t slot = 0; slot < k; ++slot) {
          const int dst = b.topk_idx[t * k + slot] / per_rank;
          if (dst == src) continue;
          outputs_out += (dst == me);
          outputs_in += (src == me);
        }
      }
    }
    const DispatchStats& f = dispatcher.last_forward_stats();
    EXPECT_EQ(f.rows_sent, tokens_out + outputs_out);
    EXPECT_EQ(f.rows_received, tokens_in + outputs_in);
    EXPECT_EQ(f.bytes_sent, 8 * (p - 1) + tokens_out * (4 * d + 4 * k) + outputs_out * 4 * d);
    EXPECT_EQ(f.bytes_received, 8 * (p - 1) + tokens_in * (4 * d + 4 * k) + outputs_in * 4 * d);
    const DispatchStats& bw = dispatcher.last_backward_stats();
    EXPECT_EQ(bw.rows_sent, outputs_in + tokens_in);
    EXPECT_EQ(bw.bytes_received, (outputs_out + tokens_out) * 4 * d);
    if (me == 0)
      std::printf(
          "[metrics] dispatcher setup %zu, %d ranks, rank 0: %lld tokens, forward sent %lld rows / %lld B, "
          "received %lld rows / %lld B; backward sent %lld B\n",
          si, p, static_cast<long long>(n), static_cast<long long>(f.rows_sent),
          static_cast<long long>(f.bytes_sent), static_cast<long long>(f.rows_received),
          static_cast<long long>(f.bytes_received), static_cast<long long>(bw.bytes_sent));
  }
}

// Per-expert linear maps out = W_e·row, as grouped gemms over the local experts' slice of W.
struct LinearExperts {
  Tensor weight;  // [E_local, D, D]
  Tensor grad;    // [E_local, D, D], accumulated
  Tensor saved_rows;
  ExpertForwardFn forward() {
    return [this](const Tensor& rows, const std::vector<int64_t>& offsets) {
      saved_rows = rows;
      Tensor out = testing_util::nan_tensor({rows.dim(0), weight.dim(1)});
      kernels::grouped_gemm(rows, weight, true, out, offsets);
      return out;
    };
  }
  ExpertBackwardFn backward() {
    return [this](const Tensor& d_out, const std::vector<int64_t>& offsets) {
      kernels::grouped_gemm_wgrad(d_out, saved_rows, grad, offsets);
      Tensor d_rows = testing_util::nan_tensor(saved_rows.shape());
      kernels::grouped_gemm(d_out, weight, false, d_rows, offsets);
      return d_rows;
    };
  }
};

struct Result {
  Tensor y, dx, d_topk_w, d_weight;
};

// The dispatcher on `group` over tokens [begin, begin + n) of the batch, experts of `group`'s rank.
Result run_linear(Communicator& group, const RoutingCase& s, const Batch& b, const Tensor& weight,
                  int64_t begin, int64_t n) {
  ExpertDispatcher dispatcher(group, s.n_experts);
  const IndexRange mine = dispatcher.local_experts();
  LinearExperts experts{weight.slice(mine.begin, mine.end).clone(),
                        Tensor::zeros({mine.size(), s.d_model, s.d_model}), Tensor()};
  Result r;
  r.y = dispatcher.forward(rows_of(b.x, begin, n), idx_rows(b, begin, n, s.top_k),
                           rows_of(b.topk_w, begin, n), experts.forward());
  ExpertDispatcher::Grads g = dispatcher.backward(rows_of(b.dy, begin, n), experts.backward());
  r.dx = g.dx;
  r.d_topk_w = g.d_topk_w;
  r.d_weight = experts.grad;
  return r;
}

// ‖actual − expected‖ / ‖expected‖ over rows [begin, begin + count) of expected (0 when both are empty).
double relative_error(const Tensor& actual, const Tensor& expected, int64_t begin, int64_t count) {
  const std::vector<double> a = testing_util::to_double(actual);
  const std::vector<double> b = testing_util::to_double(expected.slice(begin, begin + count));
  EXPECT_EQ(a.size(), b.size());
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

TEST(ExpertDispatcher, LinearExpertsMatchOneRankForEveryExpertParallelSize) {
  Communicator& comm = world();
  const int w = comm.size(), me = comm.rank();
  for (size_t si = 0; si < kCases.size(); ++si) {
    const RoutingCase& s = kCases[si];
    for (int ep = 1; ep <= w; ++ep) {
      if (w % ep != 0) continue;
      SCOPED_TRACE("setup " + std::to_string(si) + ", EP " + std::to_string(ep));
      const int64_t k = s.top_k, d = s.d_model;
      const Batch b = make_batch(s, w, ep, 200 + si);
      std::mt19937 gen(300 + si);
      const Tensor weight = testing_util::random_normal({s.n_experts, d, d}, gen, 0.3);

      // Everything on one rank, and that checked against naive double loops.
      std::unique_ptr<Communicator> alone = make_local_communicator();
      const Result ref = run_linear(*alone, s, b, weight, 0, b.n());
      std::vector<double> y(b.n() * d, 0.0), dx(b.n() * d, 0.0), dw(b.n() * k), dweight(weight.numel(), 0.0);
      const float* W = weight.data<float>();
      for (int64_t t = 0; t < b.n(); ++t) {
        for (int64_t slot = 0; slot < k; ++slot) {
          const int64_t e = b.topk_idx[t * k + slot];
          const double wk = b.topk_w.data<float>()[t * k + slot];
          double dot = 0.0;
          for (int64_t i = 0; i < d; ++i) {
            double out_i = 0.0;
            for (int64_t j = 0; j < d; ++j)
              out_i += W[(e * d + i) * d + j] * static_cast<double>(b.x.data<float>()[t * d + j]);
            const double dy_i = b.dy.data<float>()[t * d + i];
            y[t * d + i] += wk * out_i;
            dot += dy_i * out_i;
            for (int64_t j = 0; j < d; ++j) {
              dx[t * d + j] += wk * dy_i * W[(e * d + i) * d + j];
              dweight[(e * d + i) * d + j] += wk * dy_i * b.x.data<float>()[t * d + j];
            }
          }
          dw[t * k + slot] = dot;
        }
      }
      testing_util::expect_close(ref.y, y, 1e-5, 1e-5, "one-rank y vs naive");
      testing_util::expect_close(ref.dx, dx, 1e-5, 1e-5, "one-rank dx vs naive");
      testing_util::expect_close(ref.d_topk_w, dw, 1e-5, 1e-5, "one-rank d_topk_w vs naive");
      testing_util::expect_close(ref.d_weight, dweight, 1e-5, 1e-5, "one-rank expert grads vs naive");

      // Distributed: each expert-parallel group dispatches its own ranks' tokens; the expert-data-
      // parallel group sums the expert gradients.
      ProcessGroups groups(comm, ep, s.n_experts);
      const int64_t begin = prefix(b.tokens_per_rank, me), n = b.tokens_per_rank[me];
      Result dist = run_linear(groups.expert_parallel(), s, b, weight, begin, n);
      groups.expert_data_parallel().all_reduce_sum(dist.d_weight);
      const IndexRange mine = groups.layout().local_experts();
      EXPECT_LE(relative_error(dist.y, ref.y, begin, n), 1e-6) << "y vs one rank";
      EXPECT_LE(relative_error(dist.dx, ref.dx, begin, n), 1e-6) << "dx vs one rank";
      EXPECT_LE(relative_error(dist.d_topk_w, ref.d_topk_w, begin, n), 1e-6) << "d_topk_w vs one rank";
      EXPECT_LE(relative_error(dist.d_weight, ref.d_weight, mine.begin, mine.size()), 1e-6)
          << "expert grads vs one rank";
    }
  }
}

// Local expert i (global first_expert + i) scales its rows by (global id + 1)/8. Computed on a host
// copy whatever the rows' device, so CPU and CUDA runs apply bit-identical expert maps and differ only
// in the dispatcher's own work; the backward scales the gradients alike.
Tensor scale_by_expert(const Tensor& rows, const std::vector<int64_t>& offsets, int64_t first_expert) {
  Tensor host = rows.copy_to(Device::CPU);
  const int64_t d = rows.cols();
  for (size_t i = 0; i + 1 < offsets.size(); ++i)
    for (int64_t e = offsets[i] * d; e < offsets[i + 1] * d; ++e)
      host.data<float>()[e] *= 0.125f * static_cast<float>(first_expert + static_cast<int64_t>(i) + 1);
  return host.copy_to(rows.device());
}

struct ScaledRun {
  Tensor y, dx, d_topk_w, expert_rows;
  DType gradients_dtype = DType::F32;  // of the output gradients the experts' backward got
  std::vector<int64_t> offsets;
  DispatchStats forward, backward;
};

// The experts, given the first global expert this rank holds: rows grouped by local expert -> outputs
// (and the same map for the gradients).
using ExpertMap = std::function<Tensor(const Tensor& rows, const std::vector<int64_t>& offsets, int64_t first)>;

ScaledRun run_with(Communicator& group, int64_t n_experts, const Tensor& x, const Tensor& idx, const Tensor& w,
                   const Tensor& dy, const ExpertMap& map) {
  ExpertDispatcher dispatcher(group, n_experts);
  const int64_t first = dispatcher.local_experts().begin;
  ScaledRun r;
  r.y = dispatcher.forward(x, idx, w, [&](const Tensor& rows, const std::vector<int64_t>& offsets) {
    r.expert_rows = rows.copy_to(Device::CPU);
    return map(rows, offsets, first);
  });
  r.offsets = dispatcher.local_expert_offsets();
  r.forward = dispatcher.last_forward_stats();
  const ExpertDispatcher::Grads g =
      dispatcher.backward(dy, [&](const Tensor& d_out, const std::vector<int64_t>& offsets) {
        r.gradients_dtype = d_out.dtype();
        return map(d_out, offsets, first);
      });
  r.dx = g.dx;
  r.d_topk_w = g.d_topk_w;
  r.backward = dispatcher.last_backward_stats();
  return r;
}

ScaledRun run_scaled(Communicator& group, int64_t n_experts, const Tensor& x, const Tensor& idx, const Tensor& w,
                     const Tensor& dy) {
  return run_with(group, n_experts, x, idx, w, dy, scale_by_expert);
}

using ExpertDispatcherOnCudaTensors = testing_util::CudaTensorTest;

TEST_F(ExpertDispatcherOnCudaTensors, GivesTheCpuResults) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  for (size_t si = 0; si < kCases.size(); ++si) {
    const RoutingCase& s = kCases[si];
    SCOPED_TRACE("setup " + std::to_string(si));
    const RankTokens t = tokens_of(make_batch(s, p, p, 400 + si), s, me);
    const Tensor &x = t.x, &w = t.w, &dy = t.dy, &idx = t.idx;
    const ScaledRun cpu = run_scaled(comm, s.n_experts, x, idx, w, dy);
    const ScaledRun gpu = run_scaled(comm, s.n_experts, x.copy_to(Device::CUDA), idx.copy_to(Device::CUDA),
                                     w.copy_to(Device::CUDA), dy.copy_to(Device::CUDA));
    testing_util::expect_cuda_with_cpu_bits(gpu.y, cpu.y, "y");
    testing_util::expect_cuda_with_cpu_bits(gpu.dx, cpu.dx, "dx");
    EXPECT_TRUE(testing_util::bitwise_equal(gpu.expert_rows, cpu.expert_rows)) << "rows the experts got";
    EXPECT_EQ(gpu.d_topk_w.device(), Device::CUDA);
    testing_util::expect_close(gpu.d_topk_w.copy_to(Device::CPU), testing_util::to_double(cpu.d_topk_w), 1.2e-7,
                               1e-30, "d_topk_w within one float rounding of the CPU's");
    EXPECT_EQ(gpu.offsets, cpu.offsets);
    EXPECT_TRUE(gpu.forward == cpu.forward) << "forward traffic";
    EXPECT_TRUE(gpu.backward == cpu.backward) << "backward traffic";

    // Routing read from the host while the activations live on the device.
    const ScaledRun mixed = run_scaled(comm, s.n_experts, x.copy_to(Device::CUDA), idx, w.copy_to(Device::CUDA),
                                       dy.copy_to(Device::CUDA));
    testing_util::expect_cuda_with_cpu_bits(mixed.y, cpu.y, "y with host routing");
  }
}

// bf16 rows (what the MoE sends under bf16 matmuls) travel as they are: the experts get the very bf16
// rows, y is the CPU's on their values bit for bit (the combine reads bf16 as the floats they are),
// the expert outputs' gradients travel rounded to bf16 (dx within that rounding of the CPU's f32 run:
// at most K terms of |w·dy| ≤ 1, each off by ≤ 2^-9), and each token and output row costs half its
// f32 bytes.
TEST_F(ExpertDispatcherOnCudaTensors, Bf16RowsTravelAsTheyAre) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  for (size_t si = 0; si < kCases.size(); ++si) {
    const RoutingCase& s = kCases[si];
    SCOPED_TRACE("setup " + std::to_string(si));
    const RankTokens t = tokens_of(make_batch(s, p, p, 700 + si), s, me);
    const testing_util::Bf16Values x = testing_util::round_to_bf16(t.x);
    // Identity experts: whatever rows arrive go back, in their dtype.
    const ExpertMap identity = [](const Tensor& rows, const std::vector<int64_t>&, int64_t) { return rows; };
    const ScaledRun cpu = run_with(comm, s.n_experts, x.f32, t.idx, t.w, t.dy, identity);
    const ScaledRun gpu = run_with(comm, s.n_experts, x.bf16.copy_to(Device::CUDA), t.idx.copy_to(Device::CUDA),
                                   t.w.copy_to(Device::CUDA), t.dy.copy_to(Device::CUDA), identity);
    EXPECT_TRUE(testing_util::bitwise_equal(gpu.expert_rows, testing_util::round_to_bf16(cpu.expert_rows).bf16))
        << "the experts get the bf16 rows";
    testing_util::expect_cuda_with_cpu_bits(gpu.y, cpu.y, "y");
    testing_util::expect_close(gpu.dx.copy_to(Device::CPU), testing_util::to_double(cpu.dx), 0.0,
                               static_cast<double>(s.top_k) / 512, "dx");
    testing_util::expect_close(gpu.d_topk_w.copy_to(Device::CPU), testing_util::to_double(cpu.d_topk_w), 1.2e-7, 1e-30,
                               "d_topk_w");
    EXPECT_EQ(gpu.forward.rows_sent, cpu.forward.rows_sent);
    EXPECT_EQ(gpu.forward.bytes_sent, cpu.forward.bytes_sent - gpu.forward.rows_sent * s.d_model * 2);
    EXPECT_EQ(gpu.forward.bytes_received, cpu.forward.bytes_received - gpu.forward.rows_received * s.d_model * 2);
    EXPECT_EQ(gpu.gradients_dtype, DType::BF16) << "the outputs' gradients travel in the outputs' dtype";
    EXPECT_EQ(gpu.backward.rows_sent, cpu.backward.rows_sent);
    EXPECT_LE(gpu.backward.bytes_sent, cpu.backward.bytes_sent);
  }
}

// Given `onto`, the combine adds the routed sum to what it holds and returns it.
TEST(ExpertDispatcher, CombinesOntoAGivenOutput) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  for (size_t si = 0; si < kCases.size(); ++si) {
    const RoutingCase& s = kCases[si];
    SCOPED_TRACE("setup " + std::to_string(si));
    const RankTokens t = tokens_of(make_batch(s, p, p, 500 + si), s, me);
    const Tensor y = run_scaled(comm, s.n_experts, t.x, t.idx, t.w, t.dy).y;
    std::mt19937 gen(600 + si);
    const Tensor base = testing_util::random_uniform(y.shape(), gen);
    Tensor onto = base.clone();
    ExpertDispatcher dispatcher(comm, s.n_experts);
    const int64_t first = dispatcher.local_experts().begin;
    const auto experts = [&](const Tensor& rows, const std::vector<int64_t>& offsets) {
      return scale_by_expert(rows, offsets, first);
    };
    const Tensor sum = dispatcher.forward(t.x, t.idx, t.w, experts, onto);
    EXPECT_EQ(sum.raw(), onto.raw()) << "the sum is written into onto";
    for (int64_t i = 0; i < y.numel(); ++i)
      ASSERT_NEAR(sum.data<float>()[i], base.data<float>()[i] + y.data<float>()[i],
                  1e-6 * (1.0 + std::abs(base.data<float>()[i] + y.data<float>()[i])))
          << "element " << i;
    // On every rank at once (before any message): nothing hangs.
    EXPECT_THROW(dispatcher.forward(t.x, t.idx, t.w, experts, Tensor::zeros({y.rows() + 1, 1})), Error);
  }
}

TEST(ExpertDispatcher, RejectsBadRouting) {
  Communicator& comm = world();
  ExpertDispatcher dispatcher(comm, 4 * comm.size());
  const Tensor x = Tensor::zeros({2, 3}), w = Tensor::full({2, 1}, 1.0f);
  const auto identity = [](const Tensor& rows, const std::vector<int64_t>&) { return rows; };
  EXPECT_THROW(dispatcher.forward(x, Tensor::from_vector(std::vector<int32_t>{0, 4 * comm.size()}, {2, 1}), w,
                                  identity),
               Error);
  EXPECT_THROW(dispatcher.forward(x, Tensor::from_vector(std::vector<int32_t>{0, -1}, {2, 1}), w, identity),
               Error);
  EXPECT_THROW(ExpertDispatcher(comm, 0), Error);
  if (comm.size() > 1) {
    EXPECT_THROW(ExpertDispatcher(comm, comm.size() + 1), Error);
  }
}

}  // namespace
}  // namespace engram
