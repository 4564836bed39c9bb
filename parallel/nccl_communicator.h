#pragma once
// The NCCL communicator (CUDA builds that found NCCL; ENGRAM_HAVE_NCCL): a group of ranks with one
// GPU each whose device() is CUDA, so collectives move device memory GPU to GPU. Every collective
// runs on the group's own communication stream after the work already queued on the compute
// stream. A blocking collective makes the compute stream wait for it, so callers see the ordinary
// in-order semantics of the compute stream; a started one (start_all_reduce_sum,
// start_all_to_all_v_rows) lets the compute stream run on until its PendingCollective is waited for.
// The host never waits for a collective, except to read results into host memory and when the
// scratch of started sums in flight passes kNcclScratchInFlightBytes.
//
// Determinism: float sums (all_reduce_sum, reduce_scatter_sum) of device buffers never use NCCL's
// reductions, whose order across ranks is not guaranteed to repeat. NCCL only moves the blocks (all-to-all); each rank
// adds its block's P copies in rank order on its GPU (parallel/ordered_sum.h), and all_reduce_sum
// then all-gathers the summed blocks. Every rank ends with the same bits, every run, with the
// traffic of a ring all-reduce. Integer sums are exact in any order and use ncclAllReduce /
// ncclReduceScatter.
//
// The communicator keeps a host communicator of the same ranks (in the same order), its host_group():
// every collective on host buffers (counts, metrics, table ids: no staging through the device; float
// sums there are MPI's, the same bits on every rank and every run for the same inputs, not
// necessarily in rank order), barriers, aborting the job, and bootstrapping the NCCL communicators
// of split groups: rank 0 of the new group makes the NCCL unique id and broadcasts it over the host
// group.
#include <cstdint>
#include <memory>

#include "parallel/communicator.h"

namespace engram {

// Scratch of started float sums still in flight, above which the host waits for the oldest (a sum
// of count elements uses count elements of scratch until its communication stream is done with it).
// engram-plan counts it in the device peak of multi-GPU runs.
constexpr int64_t kNcclScratchInFlightBytes = int64_t{256} << 20;

}  // namespace engram

#ifdef ENGRAM_HAVE_NCCL
namespace engram {

// Collective over host_group (a host communicator such as a copy of the MPI world, or a Local group
// of one): the NCCL communicator of its ranks, in its order, each on its current CUDA device (the
// device of cuda_context(); pick it with cudaSetDevice before the context is first used, as
// make_device_communicator does). Ranks must be on distinct GPUs (NCCL refuses two ranks on one).
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host_group);

}  // namespace engram
#endif
