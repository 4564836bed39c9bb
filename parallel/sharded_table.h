#pragma once
// Row-sharded embedding table (DESIGN.md decision 3, TorchRec's input_dist / lookup / output_dist).
//
// A table of R rows × C columns is split over the table group in contiguous row ranges
// (even_range: the first R % W ranks own one row more); each row is owned by exactly one rank,
// which alone holds its values and optimizer moments. No stage ever all-reduces the table.
//
// lookup(shard, rows [M] global ids):
//   1. dedup: the sorted distinct rows this rank needs (U of them) and each request's index among them;
//   2. exchange counts, all_to_all_v the distinct ids to their owners (sorted ids are already grouped
//      by owner, owners ascending);
//   3. owners gather the requested rows from their shard;
//   4. all_to_all_v the vectors back, expand the U vectors to the M requests.
// backward(routing, drows [M, C]):
//   1'. sum the gradients per distinct row locally (kernels::reduce_rows: requests in ascending order);
//   2'. send each distinct row's sum to its owner, in the order the ids went in stage 2 (the owner
//       kept them, so ids are not sent again);
//   3'. owners sum the contributions per row over the received concatenation, which is ordered by
//       source rank (kernels::reduce_rows again) -> RowGrads in the owner's LOCAL row ids, ready for
//       the row-sparse Adam.
// Stages 1–2 depend only on the ids (hashes of token ids). start_lookup runs stages 1–3 and starts
// stage 4's transfer (Communicator::start_all_to_all_v_rows); finish_lookup waits for it and expands.
// The model starts every Engram layer's lookup before its first block, so on NCCL the transfers run
// while the blocks before each Engram layer compute.
//
// Devices: the shard, out and drows may be CPU or CUDA tensors (one device; rows anywhere). Every
// tensor of the routing and of the results lives on the shard's device and equals, bit for bit, what
// CPU tensors give: the dedup and exchange plan are index work on a host copy of the ids, the row
// gathers and sums (kernels::embedding_gather, kernels::reduce_rows) run on the shard's device.
#include <cstdint>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "runtime/row_grads.h"

namespace engram {

// The exchange plan of one lookup; its backward needs it (several lookups may be in flight).
// Its tensors live on the device of the lookup's shard.
struct TableRouting {
  int64_t requested = 0;               // M
  Tensor unique_rows;                  // i64 [U]: distinct global rows this rank needs, ascending
  Tensor inverse;                      // i64 [M]: index in unique_rows of each request
  std::vector<int64_t> ids_to_owner;   // distinct ids sent to each owner (= vectors received from it)
  std::vector<int64_t> ids_from_rank;  // ids each rank asked this owner for (= vectors sent to it)
  Tensor served_rows;                  // i64 [Σ ids_from_rank]: LOCAL shard rows asked for, by source rank
};

// A lookup between start_lookup and finish_lookup.
struct PendingLookup {
  TableRouting routing;
  StartedRows vectors;  // the unique rows' vectors from their owners, in unique_rows order
};

// Traffic to and from OTHER ranks of the last lookup / backward, and the dedup it achieved.
struct TableStats {
  int64_t requested = 0;  // row requests (M)
  int64_t unique = 0;     // distinct rows among them (U)
  int64_t ids_sent = 0, ids_received = 0;
  int64_t vectors_sent = 0, vectors_received = 0;  // rows of C floats (values or gradients)
  int64_t bytes_sent = 0, bytes_received = 0;      // ids, vectors and the counts exchange
  double dedup_ratio() const { return unique > 0 ? static_cast<double>(requested) / unique : 1.0; }
  bool operator==(const TableStats&) const = default;
};

class ShardedTable {
 public:
  // group: the table group; the whole table is global_rows × width.
  ShardedTable(Communicator& group, int64_t global_rows, int64_t width);

  // This rank's rows: shards are [owned().size(), width] tensors holding global rows owned().
  IndexRange owned() const { return owned_; }
  int owner_of(int64_t row) const { return even_range_owner(row, global_rows_, group_.size()); }

  // out[i, :] = table[rows[i], :] for the M global ids in rows (i64, any shape); out has M·width f32
  // elements (e.g. [.., width]) and is written. Collective over the group (M may be 0 on a rank).
  TableRouting lookup(const Tensor& shard, const Tensor& rows, Tensor& out);
  // lookup in two halves: start_lookup is the collective part (stages 1–3, and stage 4's transfer
  // started); finish_lookup waits for the transfer and writes out, as lookup does, or in the dtype
  // products take (kernels::matmul_operand_dtype). Several lookups may be started before the first
  // is finished.
  PendingLookup start_lookup(const Tensor& shard, const Tensor& rows);
  TableRouting finish_lookup(PendingLookup&& lookup, Tensor& out);

  // drows (M·width f32, the gradient of lookup's out) -> this rank's owned rows' summed gradients
  // from every rank, in local row ids. Collective over the group.
  RowGrads backward(const TableRouting& routing, const Tensor& drows);

  const TableStats& last_lookup_stats() const { return lookup_stats_; }
  const TableStats& last_backward_stats() const { return backward_stats_; }

 private:
  Communicator& group_;
  int64_t global_rows_, width_;
  IndexRange owned_;
  TableStats lookup_stats_, backward_stats_;
};

}  // namespace engram
