#pragma once
// Deterministic batches from a token shard (docs/DATA.md, MODEL.md §1).
//
// Rows: a shard of N tokens gives R = (N − 1) / T rows of T + 1 tokens; row c is tokens
// [c·T, c·T + T + 1) (inputs = its first T tokens, targets = its last T), so consecutive rows share one
// token.
//
// Training order: global row g lies in epoch e = g / R at position i = g % R and reads row perm_e[i], where
// perm_e is a Fisher–Yates shuffle of [0, R) driven by the counter-based stream
// key_e = stream_key(data_seed, "data/epoch/<e>"):
//   for i = R−1 down to 1:  j = splitmix64_at(key_e, R − i) mod (i + 1);  swap(perm[i], perm[j])
// Optimizer step s uses global rows [s·GB, (s+1)·GB); rank r of W takes the contiguous slice
// [s·GB + r·GB/W, s·GB + (r+1)·GB/W) and splits it, in order, into micro-batches. The batches of a step
// are a pure function of (shard, seed, layout, step): resuming needs nothing but the step.
//
// Validation: rows in file order (no shuffle), the first `max_rows` of them (or all).
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/token_shards.h"

namespace engram {

// Rows of T + 1 tokens cut from one shard.
class ShardRows {
 public:
  // Error naming the shard, its token count and T when it holds less than one row.
  ShardRows(TokenShard shard, int64_t seq_len);

  const std::string& path() const { return shard_.path; }
  int64_t seq_len() const { return seq_len_; }
  int64_t num_rows() const { return num_rows_; }
  // A [rows.size(), T] batch: inputs and targets of the given rows, in the given order.
  Batch gather(const std::vector<int64_t>& rows) const;

 private:
  TokenShard shard_;
  int64_t seq_len_;
  int64_t num_rows_;
};

// How a global batch is cut: rows per optimizer step over all ranks, this rank's share, micro-batches.
struct BatchLayout {
  int64_t global_batch = 1;  // GB
  int64_t micro_batch = 0;   // rows per micro-batch on one rank; 0 = the rank's whole share at once
  int rank = 0;
  int world = 1;
};

class TrainBatches {
 public:
  // Errors name the rule when GB is not divisible by world, or the rank's share by micro_batch.
  TrainBatches(ShardRows rows, const BatchLayout& layout, uint64_t data_seed);

  const ShardRows& rows() const { return rows_; }
  // The shard row read at global row g (see the header comment).
  int64_t row_at(int64_t global_row);
  // This rank's micro-batches for optimizer step `step` (0-based), in order.
  std::vector<Batch> step_batches(int64_t step);

 private:
  const std::vector<int64_t>& epoch_permutation(int64_t epoch);

  ShardRows rows_;
  BatchLayout layout_;
  uint64_t data_seed_;
  int64_t cached_epoch_ = -1;  // the permutation of one epoch is kept: consecutive steps reuse it
  std::vector<int64_t> cached_perm_;
};

// Fisher–Yates permutation of [0, num_rows) for one epoch (the formula in the header comment).
std::vector<int64_t> epoch_permutation(uint64_t data_seed, int64_t epoch, int64_t num_rows);

// The first min(max_rows, R) rows in file order, in batches of `batch_rows` (the last may be smaller).
std::vector<Batch> validation_batches(const ShardRows& rows, int64_t max_rows, int64_t batch_rows);

}  // namespace engram
