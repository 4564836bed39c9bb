#include "parallel/sharded_table.h"

#include <algorithm>

#include "kernels/embedding.h"
#include "kernels/matmul_precision.h"
#include "runtime/key_order.h"

namespace engram {

namespace {

constexpr int64_t kIdBytes = sizeof(int64_t), kFloatBytes = sizeof(float), kCountBytes = sizeof(int64_t);

}  // namespace

ShardedTable::ShardedTable(Communicator& group, int64_t global_rows, int64_t width)
    : group_(group),
      global_rows_(global_rows),
      width_(width),
      owned_(even_range(global_rows, group.size(), group.rank())) {
  EG_CHECK(global_rows >= 1 && width >= 1, "sharded table: ", global_rows, " × ", width,
           " must have at least one row and one column");
}

TableRouting ShardedTable::lookup(const Tensor& shard, const Tensor& rows, Tensor& out) {
  return finish_lookup(start_lookup(shard, rows), out);
}

PendingLookup ShardedTable::start_lookup(const Tensor& shard, const Tensor& rows) {
  check_dtype(rows, DType::I64, "sharded table lookup rows");
  check_dtype(shard, DType::F32, "sharded table shard");
  check_shape(shard, {owned_.size(), width_}, "sharded table shard");
  const int64_t m = rows.numel();
  const Device device = shard.device();
  // The dedup and the exchange plan are index work on a host copy of the ids; the row gathers run on
  // the shard's device. A device-side plan (sort and unique there) would save the copies and waits.
  const Tensor ids = rows.to(Device::CPU);  // the caching host allocator's memory: no fresh pages
  const int64_t* id = ids.data<int64_t>();
  for (int64_t i = 0; i < m; ++i)
    EG_CHECK(id[i] >= 0 && id[i] < global_rows_, "table row ", id[i], " at position ", i,
             " is outside the table's ", global_rows_, " rows [0, ", global_rows_, ")");

  // 1. Dedup: sorted distinct rows, and each request's index among them, from one walk over the
  // requests in row order.
  TableRouting routing;
  routing.requested = m;
  const Tensor order = stable_key_order(id, m, global_rows_ - 1);
  const int64_t* by_row = order.data<int64_t>();
  std::vector<int64_t> unique;
  unique.reserve(static_cast<size_t>(m));  // pages are touched only as far as it fills
  Tensor inverse = Tensor::empty({m}, DType::I64);
  int64_t* inverse_of = inverse.data<int64_t>();
  for (int64_t s = 0; s < m; ++s) {
    const int64_t i = by_row[s];
    if (s == 0 || id[i] != id[by_row[s - 1]]) unique.push_back(id[i]);
    inverse_of[i] = static_cast<int64_t>(unique.size()) - 1;
  }
  const int64_t n_unique = static_cast<int64_t>(unique.size());
  routing.inverse = inverse.to(device);

  // 2. Ids to their owners: ascending ids are grouped by owner, owners ascending.
  routing.ids_to_owner.assign(group_.size(), 0);
  for (int64_t row : unique) ++routing.ids_to_owner[owner_of(row)];
  routing.ids_from_rank = group_.exchange_counts(routing.ids_to_owner);
  std::vector<int64_t> served = group_.all_to_all_v(unique, routing.ids_to_owner, routing.ids_from_rank);
  for (int64_t& row : served) {
    EG_ASSERT(owned_.contains(row), "sharded table: asked for row ", row, " owned by another rank");
    row -= owned_.begin;
  }
  routing.served_rows = Tensor::from_vector(served).to(device);
  routing.unique_rows = Tensor::from_vector(unique).to(device);

  // 3. Owners gather; 4. vectors back (started here), expanded to every request (finish_lookup).
  Tensor served_vectors = Tensor::empty({routing.served_rows.numel(), width_}, DType::F32, device);
  kernels::embedding_gather(shard, routing.served_rows, served_vectors);
  StartedRows vectors = group_.start_all_to_all_v_rows(served_vectors, routing.ids_from_rank, routing.ids_to_owner);

  lookup_stats_ = TableStats{};
  lookup_stats_.requested = m;
  lookup_stats_.unique = n_unique;
  lookup_stats_.ids_sent = group_.to_others(routing.ids_to_owner);
  lookup_stats_.ids_received = group_.to_others(routing.ids_from_rank);
  lookup_stats_.vectors_sent = lookup_stats_.ids_received;
  lookup_stats_.vectors_received = lookup_stats_.ids_sent;
  const int64_t counts_bytes = (group_.size() - 1) * kCountBytes, vector_bytes = width_ * kFloatBytes;
  lookup_stats_.bytes_sent =
      counts_bytes + lookup_stats_.ids_sent * kIdBytes + lookup_stats_.vectors_sent * vector_bytes;
  lookup_stats_.bytes_received =
      counts_bytes + lookup_stats_.ids_received * kIdBytes + lookup_stats_.vectors_received * vector_bytes;
  return {std::move(routing), std::move(vectors)};
}

TableRouting ShardedTable::finish_lookup(PendingLookup&& lookup, Tensor& out) {
  const DType operand_dtype = kernels::matmul_operand_dtype(out.device());
  EG_ASSERT(out.dtype() == DType::F32 || out.dtype() == operand_dtype, "sharded table lookup out ", out.describe(),
            " must be f32 or ", dtype_name(operand_dtype));
  const int64_t m = lookup.routing.requested;
  EG_ASSERT(out.numel() == m * width_, "sharded table lookup out ", out.describe(), " needs ", m, "·", width_,
            " elements");
  const Device device = lookup.routing.inverse.device();
  EG_CHECK(out.device() == device, "sharded table lookup out ", out.describe(), " is not on ", device_name(device),
           " with the shard");
  lookup.vectors.done->wait();
  kernels::embedding_gather(lookup.vectors.rows, lookup.routing.inverse, out);
  return std::move(lookup.routing);
}

RowGrads ShardedTable::backward(const TableRouting& routing, const Tensor& drows) {
  check_dtype(drows, DType::F32, "sharded table backward drows");
  EG_ASSERT(drows.numel() == routing.requested * width_, "sharded table backward drows ", drows.describe(),
            " needs ", routing.requested, "·", width_, " elements");
  EG_CHECK(drows.device() == routing.inverse.device(), "sharded table backward drows ", drows.describe(),
           " is not on ", device_name(routing.inverse.device()), " with its lookup");
  // 1'. One summed gradient per distinct row, in the lookup's distinct-row order (inverse already
  // names each request's row: no second sort), each row's requests added in ascending order.
  Tensor local = Tensor::zeros({routing.unique_rows.numel(), width_}, DType::F32, drows.device());
  kernels::embedding_scatter_add(drows.view({routing.requested, width_}), routing.inverse, local);
  // 2'. To the owners, in the order of the ids; 3'. owners sum by source rank.
  const Tensor received = group_.all_to_all_v_rows(local, routing.ids_to_owner, routing.ids_from_rank);
  RowGrads owned = kernels::reduce_rows(received, routing.served_rows);

  backward_stats_ = TableStats{};
  backward_stats_.requested = routing.requested;
  backward_stats_.unique = routing.unique_rows.numel();
  backward_stats_.vectors_sent = group_.to_others(routing.ids_to_owner);
  backward_stats_.vectors_received = group_.to_others(routing.ids_from_rank);
  backward_stats_.bytes_sent = backward_stats_.vectors_sent * width_ * kFloatBytes;
  backward_stats_.bytes_received = backward_stats_.vectors_received * width_ * kFloatBytes;
  return owned;
}

}  // namespace engram
