#pragma once
// Dense gradients in flat buffers, summed over ranks in buckets as soon as the backward pass has
// finished them (the gradient buckets of PyTorch DDP and Megatron-LM).
//
// Every dense gradient that is summed over ranks (replicated parameters over the world; expert blocks
// over the expert-data-parallel group, when it has several ranks) becomes a view into one flat buffer
// per group, laid out in reverse registration order, which is the order the backward pass finishes
// them in. Each view starts on a 256-byte boundary, as a fresh device allocation would. A buffer is cut
// into buckets: a bucket closes once it holds bucket_bytes (0: every parameter is a bucket of its own).
//
// The model's backward reports, block by block, the registration index from which on the gradients
// are final (Model::GradientsFinal); gradients_final_from then starts every bucket whose parameters
// all are (Communicator::start_all_reduce_sum), in one fixed order, so every rank starts the same
// collectives in the same order. finish() starts what is left and waits for everything. On NCCL the
// sums run on the groups' communication streams while the backward pass goes on; the host backends
// complete each sum when it starts. Either way the gradients end as the blocking per-parameter sums
// would leave them: NCCL adds every element in rank order whatever the bucket, and on MPI the sum of
// an element may only change its order with the message size on three or more ranks (the same bits
// on every rank and in every run, as before).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/parameters.h"

namespace engram {

class ProcessGroups;

class GradientBuckets {
 public:
  // Rebuilds the summed gradients of `params` (a model built with `groups`) as views into the flat
  // buffers, keeping their values. The views stay valid as long as this object; nothing may replace
  // those gradient tensors afterwards.
  GradientBuckets(ParameterRegistry& params, ProcessGroups& groups, int64_t bucket_bytes);

  // The gradients of the parameters registered at index >= first_final are final: starts every bucket
  // made of such parameters only that has not started yet.
  void gradients_final_from(size_t first_final);
  // Starts the buckets not started yet, then waits for all: the gradients hold their sums.
  void finish();

  struct BucketInfo {
    const Communicator* group;        // the group summing it
    std::vector<size_t> params;       // registration indices, in buffer order (descending)
    int64_t bytes;                    // including the alignment padding
    bool started;
  };
  std::vector<BucketInfo> buckets() const;  // in start order

 private:
  struct Bucket {
    Communicator* group;
    std::vector<size_t> params;  // descending: the last is the lowest index, final only once all are
    Tensor span;                 // the bucket's range of its group's flat buffer
    std::unique_ptr<PendingCollective> pending;  // set from its start until finish()
  };
  void start(Bucket& bucket);

  std::vector<Bucket> buckets_;  // by lowest index descending: the order the backward finishes them
  size_t next_ = 0;              // buckets_[0, next_) have started
};

}  // namespace engram
