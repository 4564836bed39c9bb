// The row-sharded table on 1, 2 and 4 ranks against a flat table every rank holds. Ids are drawn with
// heavy duplication (most requests hit a few hot rows); every rank builds every rank's ids and
// gradients, so each can compute the exact expected result for itself. With a CUDA device, the
// same lookups and backwards on CUDA tensors (staged through host copies by the host communicator)
// give CUDA tensors with the CPU run's bits.
#include <gtest/gtest.h>

#include <map>

#include "kernels/embedding.h"
#include "parallel/sharded_table.h"
#include "tests/parallel/support/cuda_tensors.h"
#include "tests/parallel/support/mpi_test_env.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using testing_util::world;

struct Requests {
  std::vector<Tensor> ids;    // per rank: i64 [M_r]
  std::vector<Tensor> grads;  // per rank: [M_r, C]
};

// 70 % of requests hit 5 hot rows, the rest are uniform; rank 1 requests nothing.
Requests make_requests(int ranks, int64_t rows, int64_t width, int64_t max_per_rank, std::mt19937& gen) {
  const std::vector<int64_t> sizes = testing_util::uneven_split(ranks, gen, max_per_rank);
  std::uniform_int_distribution<int64_t> any(0, rows - 1), hot(0, std::min<int64_t>(5, rows) - 1);
  std::bernoulli_distribution is_hot(0.7);
  Requests req;
  for (int r = 0; r < ranks; ++r) {
    std::vector<int64_t> ids(sizes[r]);
    for (int64_t& id : ids) id = is_hot(gen) ? hot(gen) * 7 % rows : any(gen);
    req.ids.push_back(Tensor::from_vector(ids, {sizes[r]}));
    req.grads.push_back(testing_util::random_uniform({sizes[r], width}, gen));
  }
  return req;
}

struct TableCase {
  int64_t rows, width, max_per_rank;
};
// 37 rows split unevenly; 3 rows leave some of 4 ranks without rows.
const std::vector<TableCase> kCases = {{37, 5, 200}, {3, 4, 13}, {1000, 3, 150}};

// One case's flat table, every rank's requests (the same on every rank, drawn from `seed`), the
// sharded table and this rank's shard of the flat one.
struct TableSetup {
  TableSetup(Communicator& comm, const TableCase& c, uint32_t seed)
      : gen(seed),
        flat(testing_util::random_normal({c.rows, c.width}, gen)),
        req(make_requests(comm.size(), c.rows, c.width, c.max_per_rank, gen)),
        table(comm, c.rows, c.width),
        shard(flat.slice(table.owned().begin, table.owned().end).clone()) {}
  std::mt19937 gen;
  Tensor flat;
  Requests req;
  ShardedTable table;
  Tensor shard;
};

TEST(ShardedTable, OwnershipPartitionsTheRows) {
  Communicator& comm = world();
  for (const TableCase& c : kCases) {
    ShardedTable table(comm, c.rows, c.width);
    EXPECT_EQ(table.owned(), even_range(c.rows, comm.size(), comm.rank()));
    const std::vector<int64_t> bounds =
        comm.all_gather(std::vector<int64_t>{table.owned().begin, table.owned().end});
    EXPECT_EQ(bounds.front(), 0);
    EXPECT_EQ(bounds.back(), c.rows);
    for (int r = 1; r < comm.size(); ++r)
      EXPECT_EQ(bounds[2 * r], bounds[2 * r - 1]) << "gap before rank " << r;
    for (int64_t row = 0; row < c.rows; ++row)
      EXPECT_EQ(table.owned().contains(row), table.owner_of(row) == comm.rank());
  }
}

TEST(ShardedTable, LookupAndGradientsEqualAFlatTable) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  for (size_t ci = 0; ci < kCases.size(); ++ci) {
    const TableCase& c = kCases[ci];
    SCOPED_TRACE("case " + std::to_string(ci));
    TableSetup setup(comm, c, 500 + ci);
    const Tensor &flat = setup.flat, &shard = setup.shard;
    const Requests& req = setup.req;
    ShardedTable& table = setup.table;

    // Lookup: exactly the flat table's rows.
    const int64_t m = req.ids[me].numel();
    Tensor out = testing_util::nan_tensor({m, c.width});
    const TableRouting routing = table.lookup(shard, req.ids[me], out);
    Tensor expected = Tensor::empty({m, c.width});
    kernels::embedding_gather(flat, req.ids[me], expected);
    EXPECT_TRUE(testing_util::bitwise_equal(out, expected));

    // Stats: dedup and the ids / vectors that cross ranks.
    std::map<int64_t, int> distinct;
    for (int64_t id : req.ids[me].to_vector<int64_t>()) distinct[id] = table.owner_of(id);
    int64_t ids_to_others = 0, ids_from_others = 0;
    for (const auto& [id, owner] : distinct) ids_to_others += owner != me;
    for (int r = 0; r < p; ++r) {
      if (r == me) continue;
      std::map<int64_t, int> theirs;
      for (int64_t id : req.ids[r].to_vector<int64_t>()) theirs[id] = 0;
      for (const auto& entry : theirs) ids_from_others += table.owned().contains(entry.first);
    }
    const TableStats& s = table.last_lookup_stats();
    EXPECT_EQ(s.requested, m);
    EXPECT_EQ(s.unique, static_cast<int64_t>(distinct.size()));
    EXPECT_EQ(s.ids_sent, ids_to_others);
    EXPECT_EQ(s.ids_received, ids_from_others);
    EXPECT_EQ(s.vectors_sent, ids_from_others);
    EXPECT_EQ(s.vectors_received, ids_to_others);
    EXPECT_EQ(s.bytes_sent, 8 * (p - 1) + 8 * ids_to_others + 4 * c.width * ids_from_others);
    if (m > 0) {
      EXPECT_DOUBLE_EQ(s.dedup_ratio(), static_cast<double>(m) / distinct.size());
    }

    // Backward: the owner's rows, each the sum over ranks in rank order of that rank's sum over its
    // requests in request order (the documented order, reproduced exactly in float).
    const RowGrads grads = table.backward(routing, req.grads[me]);
    std::map<int64_t, std::vector<float>> expected_sum;  // local row -> summed gradient
    for (int r = 0; r < p; ++r) {
      std::map<int64_t, std::vector<float>> per_rank;
      const int64_t* ids = req.ids[r].data<int64_t>();
      for (int64_t i = 0; i < req.ids[r].numel(); ++i) {
        if (!table.owned().contains(ids[i])) continue;
        auto& acc = per_rank.try_emplace(ids[i] - table.owned().begin, c.width, 0.0f).first->second;
        for (int64_t j = 0; j < c.width; ++j) acc[j] += req.grads[r].data<float>()[i * c.width + j];
      }
      for (const auto& [row, acc] : per_rank) {
        auto& total = expected_sum.try_emplace(row, c.width, 0.0f).first->second;
        for (int64_t j = 0; j < c.width; ++j) total[j] += acc[j];
      }
    }
    ASSERT_EQ(grads.rows.numel(), static_cast<int64_t>(expected_sum.size()));
    int64_t u = 0;
    for (const auto& [row, total] : expected_sum) {
      EXPECT_EQ(grads.rows.data<int64_t>()[u], row) << "row " << u;
      for (int64_t j = 0; j < c.width; ++j)
        EXPECT_EQ(grads.values.data<float>()[u * c.width + j], total[j])
            << "local row " << row << " col " << j;
      ++u;
    }
    const TableStats& bs = table.last_backward_stats();
    EXPECT_EQ(bs.vectors_sent, ids_to_others);
    EXPECT_EQ(bs.vectors_received, ids_from_others);
    EXPECT_EQ(bs.bytes_sent, 4 * c.width * ids_to_others);

    // The union of the owners' row gradients is reduce_rows over every rank's gradients.
    std::vector<int64_t> global_rows = grads.rows.to_vector<int64_t>();
    for (int64_t& row : global_rows) row += table.owned().begin;
    const std::vector<int64_t> union_rows = testing_util::gather_to_all(comm, global_rows);
    const std::vector<float> union_values =
        testing_util::gather_to_all(comm, grads.values.to_vector<float>());
    std::vector<int64_t> all_ids;
    std::vector<float> all_grads;
    for (int r = 0; r < p; ++r) {
      const std::vector<int64_t> ids = req.ids[r].to_vector<int64_t>();
      const std::vector<float> g = req.grads[r].to_vector<float>();
      all_ids.insert(all_ids.end(), ids.begin(), ids.end());
      all_grads.insert(all_grads.end(), g.begin(), g.end());
    }
    const int64_t total = static_cast<int64_t>(all_ids.size());
    const RowGrads flat_grads = kernels::reduce_rows(Tensor::from_vector(all_grads, {total, c.width}),
                                                     Tensor::from_vector(all_ids, {total}));
    EXPECT_EQ(union_rows, flat_grads.rows.to_vector<int64_t>());  // each row once, owners ascending
    testing_util::expect_close(
        Tensor::from_vector(union_values, {static_cast<int64_t>(union_rows.size()), c.width}),
        testing_util::to_double(flat_grads.values), 1e-6, 1e-6, "union of owners' grads");
    // Totals over the ranks, for the record.
    std::vector<int64_t> totals{s.requested,    s.unique,     s.ids_sent,
                                s.vectors_sent, s.bytes_sent, bs.bytes_sent};
    comm.all_reduce_sum(totals);
    if (me == 0)
      std::printf(
          "[metrics] table case %zu (%lld rows), %d ranks, all ranks: %lld requests, %lld unique (dedup "
          "%.2f), "
          "ids sent %lld, vectors sent %lld, lookup bytes sent %lld, backward bytes sent %lld\n",
          ci, static_cast<long long>(c.rows), p, static_cast<long long>(totals[0]),
          static_cast<long long>(totals[1]), static_cast<double>(totals[0]) / std::max<int64_t>(totals[1], 1),
          static_cast<long long>(totals[2]), static_cast<long long>(totals[3]),
          static_cast<long long>(totals[4]), static_cast<long long>(totals[5]));
  }
}

TEST(ShardedTable, LookupsInFlightKeepTheirOwnRouting) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  std::mt19937 gen(77);
  const Tensor flat = testing_util::random_normal({29, 3}, gen);
  const Requests first = make_requests(p, 29, 3, 11, gen), second = make_requests(p, 29, 3, 11, gen);
  ShardedTable table(comm, 29, 3);
  const Tensor shard = flat.slice(table.owned().begin, table.owned().end).clone();
  Tensor out_a = testing_util::nan_tensor({first.ids[me].numel(), 3});
  Tensor out_b = testing_util::nan_tensor({second.ids[me].numel(), 3});
  const TableRouting a = table.lookup(shard, first.ids[me], out_a);
  const TableRouting b = table.lookup(shard, second.ids[me], out_b);
  // Backwards in reverse order, each against a lookup of its own made alone.
  const RowGrads grads_b = table.backward(b, second.grads[me]);
  const RowGrads grads_a = table.backward(a, first.grads[me]);
  for (const auto& [req, grads] : {std::pair{&first, &grads_a}, std::pair{&second, &grads_b}}) {
    Tensor out = testing_util::nan_tensor({req->ids[me].numel(), 3});
    const RowGrads alone = table.backward(table.lookup(shard, req->ids[me], out), req->grads[me]);
    EXPECT_TRUE(testing_util::bitwise_equal(grads->rows, alone.rows));
    EXPECT_TRUE(testing_util::bitwise_equal(grads->values, alone.values));
  }

  // Started together and finished in the other order (as the model runs them: every Engram layer's
  // started before the first block): each gives the rows and the routing of a lookup made alone.
  PendingLookup started_a = table.start_lookup(shard, first.ids[me]);
  PendingLookup started_b = table.start_lookup(shard, second.ids[me]);
  Tensor late_b = testing_util::nan_tensor({second.ids[me].numel(), 3});
  Tensor late_a = testing_util::nan_tensor({first.ids[me].numel(), 3});
  const TableRouting routing_b = table.finish_lookup(std::move(started_b), late_b);
  const TableRouting routing_a = table.finish_lookup(std::move(started_a), late_a);
  EXPECT_TRUE(testing_util::bitwise_equal(late_a, out_a));
  EXPECT_TRUE(testing_util::bitwise_equal(late_b, out_b));
  EXPECT_TRUE(testing_util::bitwise_equal(routing_a.unique_rows, a.unique_rows));
  EXPECT_TRUE(testing_util::bitwise_equal(routing_b.served_rows, b.served_rows));
  EXPECT_EQ(routing_a.ids_to_owner, a.ids_to_owner);
  EXPECT_EQ(routing_b.ids_from_rank, b.ids_from_rank);
}

using ShardedTableOnCudaTensors = testing_util::CudaTensorTest;

TEST_F(ShardedTableOnCudaTensors, GivesTheCpuBits) {
  Communicator& comm = world();
  const int me = comm.rank();
  for (size_t ci = 0; ci < kCases.size(); ++ci) {
    const TableCase& c = kCases[ci];
    SCOPED_TRACE("case " + std::to_string(ci));
    TableSetup setup(comm, c, 700 + ci);
    const Tensor& shard = setup.shard;
    const Requests& req = setup.req;
    ShardedTable& table = setup.table;
    const Tensor shard_gpu = shard.copy_to(Device::CUDA);
    const int64_t m = req.ids[me].numel();

    Tensor out = testing_util::nan_tensor({m, c.width});
    const TableRouting routing = table.lookup(shard, req.ids[me], out);
    const TableStats lookup_stats = table.last_lookup_stats();
    const RowGrads grads = table.backward(routing, req.grads[me]);
    const TableStats backward_stats = table.last_backward_stats();

    Tensor out_gpu = testing_util::nan_tensor({m, c.width}).copy_to(Device::CUDA);
    const TableRouting routing_gpu = table.lookup(shard_gpu, req.ids[me].copy_to(Device::CUDA), out_gpu);
    EXPECT_TRUE(table.last_lookup_stats() == lookup_stats) << "lookup traffic";
    const RowGrads grads_gpu = table.backward(routing_gpu, req.grads[me].copy_to(Device::CUDA));
    EXPECT_TRUE(table.last_backward_stats() == backward_stats) << "backward traffic";

    testing_util::expect_cuda_with_cpu_bits(out_gpu, out, "lookup");
    testing_util::expect_cuda_with_cpu_bits(routing_gpu.unique_rows, routing.unique_rows, "routing unique rows");
    testing_util::expect_cuda_with_cpu_bits(routing_gpu.inverse, routing.inverse, "routing inverse");
    testing_util::expect_cuda_with_cpu_bits(routing_gpu.served_rows, routing.served_rows, "routing served rows");
    EXPECT_EQ(routing_gpu.ids_to_owner, routing.ids_to_owner);
    EXPECT_EQ(routing_gpu.ids_from_rank, routing.ids_from_rank);
    testing_util::expect_cuda_with_cpu_bits(grads_gpu.rows, grads.rows, "owned rows' gradient ids");
    testing_util::expect_cuda_with_cpu_bits(grads_gpu.values, grads.values, "owned rows' gradients");

    // Ids on the host, the table on the device.
    Tensor out_mixed = testing_util::nan_tensor({m, c.width}).copy_to(Device::CUDA);
    table.lookup(shard_gpu, req.ids[me], out_mixed);
    testing_util::expect_cuda_with_cpu_bits(out_mixed, out, "lookup of host ids");
  }
}

TEST(ShardedTable, RejectsBadIdsAndShards) {
  Communicator& comm = world();
  ShardedTable table(comm, 10, 2);
  const Tensor shard = Tensor::zeros({table.owned().size(), 2});
  Tensor out = Tensor::empty({1, 2});
  EXPECT_THROW(table.lookup(shard, Tensor::from_vector(std::vector<int64_t>{10}, {1}), out), Error);
  EXPECT_THROW(table.lookup(shard, Tensor::from_vector(std::vector<int64_t>{-1}, {1}), out), Error);
  EXPECT_THROW(table.lookup(Tensor::zeros({table.owned().size() + 1, 2}),
                            Tensor::from_vector(std::vector<int64_t>{0}, {1}), out),
               Error);
  EXPECT_THROW(ShardedTable(comm, 0, 2), Error);
}

}  // namespace
}  // namespace engram
