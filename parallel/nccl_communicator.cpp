// The NCCL communicator (parallel/nccl_communicator.h): raw collectives on device buffers, queued on
// the group's communication stream after an event that orders them after the compute stream's work.
//
// Memory: scratch buffers come from the device allocator, whose reuse relies on compute-stream order.
// A blocking collective makes the compute stream wait for the communication stream before it returns,
// so a block freed afterwards is reused only by work queued after the collective finished. A started
// one hands its buffers to its PendingCollective, which frees them only after it has made the compute
// stream wait (wait()), with the same effect; its scratch is freed once the communication stream has
// finished with it (hand_over_scratch).
#include "parallel/nccl_communicator.h"

#include <nccl.h>

#include <cstring>
#include <deque>
#include <exception>
#include <type_traits>

#include "parallel/ordered_sum.h"
#include "parallel/process_groups.h"
#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"

#define EG_NCCL_CHECK(call)                                                                \
  do {                                                                                     \
    const ncclResult_t eg_nccl_status = (call);                                            \
    EG_CHECK(eg_nccl_status == ncclSuccess, "NCCL call ", #call, " failed: ",              \
             ncclGetErrorString(eg_nccl_status));                                          \
  } while (0)

namespace engram {

namespace {

ncclDataType_t nccl_type(CommType type) {
  switch (type) {
    case CommType::Byte:
      return ncclUint8;
    case CommType::I32:
      return ncclInt32;
    case CommType::I64:
      return ncclInt64;
    case CommType::F32:
      return ncclFloat32;
    case CommType::F64:
      return ncclFloat64;
  }
  return ncclUint8;
}

bool is_float(CommType type) { return type == CommType::F32 || type == CommType::F64; }

// Element `i` of a buffer of `type` (P: void or const void).
template <class P>
auto* at(P* p, int64_t i, CommType type) {
  using Byte = std::conditional_t<std::is_const_v<P>, const char, char>;
  return static_cast<Byte*>(p) + i * static_cast<int64_t>(comm_type_size(type));
}

// Device scratch of `count` elements of `type` (as 8-byte words: f64 has no tensor dtype).
Tensor device_scratch(int64_t count, CommType type) {
  const int64_t bytes = count * static_cast<int64_t>(comm_type_size(type));
  return Tensor::empty({(bytes + 7) / 8}, DType::I64, Device::CUDA);
}

// The work queued on a communication stream up to its creation: wait() makes the compute stream wait
// for it, then frees the buffers (their blocks are then reused only by work ordered after it).
class NcclPending final : public PendingCollective {
 public:
  NcclPending(cudaStream_t stream, std::vector<Tensor> buffers) : buffers_(std::move(buffers)) {
    EG_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    EG_CUDA_CHECK(cudaEventRecord(done_, stream));
  }
  ~NcclPending() override {
    if (done_ == nullptr) return;
    // No throwing here; a failure shows at the next checked CUDA call.
    (void)cudaStreamWaitEvent(cuda_context().compute, done_, 0);
    (void)cudaEventDestroy(done_);
  }
  void wait() override {
    EG_ASSERT(done_ != nullptr, "a started collective waited for twice");
    EG_CUDA_CHECK(cudaStreamWaitEvent(cuda_context().compute, done_, 0));
    EG_CUDA_CHECK(cudaEventDestroy(done_));  // released once it has completed
    done_ = nullptr;
    buffers_.clear();
  }

 private:
  cudaEvent_t done_ = nullptr;
  std::vector<Tensor> buffers_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::unique_ptr<Communicator> host)
      : comm_(comm), host_(std::move(host)), rank_(host_->rank()), size_(host_->size()) {
    int nccl_rank = -1, nccl_size = 0;
    EG_NCCL_CHECK(ncclCommUserRank(comm_, &nccl_rank));
    EG_NCCL_CHECK(ncclCommCount(comm_, &nccl_size));
    EG_ASSERT(nccl_rank == rank_ && nccl_size == size_, "NCCL rank ", nccl_rank, " of ", nccl_size,
              " for host rank ", rank_, " of ", size_);
    // One stream per group: the collectives of different groups (the gradient all-reduce over the
    // world, the expert dispatch over the expert-parallel group) do not queue behind each other.
    // Highest priority, so a collective's kernels start as soon as SMs free up.
    int lowest = 0, highest = 0;
    EG_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
    EG_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, highest));
    EG_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
    EG_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    // No throwing here: a failed run is already reporting its first error. Unwinding from one, this
    // rank's peers may be waiting on it (in NCCL or MPI) until run_or_abort_all aborts the job:
    // ncclCommAbort ends its operations without waiting for them, where ncclCommDestroy may not.
    const bool failing = std::uncaught_exceptions() > 0;
    if (!failing) (void)cudaStreamSynchronize(stream_);
    for (InFlightScratch& s : scratch_in_flight_) (void)cudaEventDestroy(s.done);
    scratch_in_flight_.clear();
    if (failing) {
      ncclCommAbort(comm_);
    } else {
      ncclCommDestroy(comm_);
    }
    (void)cudaEventDestroy(compute_ready_);
    (void)cudaEventDestroy(comm_done_);
    (void)cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CUDA; }
  std::string backend() const override { return "nccl"; }
  void barrier() override { host_->barrier(); }

 protected:
  std::unique_ptr<Communicator> do_split(int color, int key) override {
    return make_nccl_communicator(host_->split(color, key));
  }
  std::unique_ptr<Communicator> do_split_node() override { return make_nccl_communicator(host_->split_node()); }
  void do_abort_all(const std::string& message) override { host_->abort_all(message); }
  Communicator* host_group() override { return host_.get(); }

  void do_broadcast(void* data, int64_t count, CommType type, int root) override {
    enqueue([&](cudaStream_t stream) {
      EG_NCCL_CHECK(ncclBroadcast(data, data, count, nccl_type(type), root, comm_, stream));
    });
    join();
  }

  void do_all_reduce_sum(void* data, int64_t count, CommType type) override {
    const Tensor scratch = enqueue_all_reduce_sum(data, count, type);
    join();
  }

  std::unique_ptr<PendingCollective> do_start_all_reduce_sum(void* data, int64_t count, CommType type,
                                                             std::vector<Tensor> buffers) override {
    hand_over_scratch(enqueue_all_reduce_sum(data, count, type));
    return pending(std::move(buffers));
  }

  void do_reduce_scatter_sum(const void* send, void* recv, int64_t recv_count, CommType type) override {
    if (!is_float(type)) {
      enqueue([&](cudaStream_t stream) {
        EG_NCCL_CHECK(ncclReduceScatter(send, recv, recv_count, nccl_type(type), ncclSum, comm_, stream));
      });
      join();
      return;
    }
    // Block r of every rank to rank r, then the P copies added in rank order.
    const std::vector<int64_t> blocks(size_, recv_count);
    const Tensor copies = device_scratch(recv_count * size_, type);
    enqueue([&](cudaStream_t stream) {
      all_to_all_v_on_stream(send, blocks, copies.raw(), blocks, type, stream);
      ordered_block_sum(copies.raw(), recv, recv_count, size_, type, stream);
    });
    join();
  }

  void do_all_gather(const void* send, void* recv, int64_t send_count, CommType type) override {
    enqueue([&](cudaStream_t stream) {
      EG_NCCL_CHECK(ncclAllGather(send, recv, send_count, nccl_type(type), comm_, stream));
    });
    join();
  }

  void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                       const std::vector<int64_t>& recv_counts, CommType type) override {
    enqueue([&](cudaStream_t stream) { all_to_all_v_on_stream(send, send_counts, recv, recv_counts, type, stream); });
    join();
  }

  std::unique_ptr<PendingCollective> do_start_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts,
                                                           void* recv, const std::vector<int64_t>& recv_counts,
                                                           CommType type, std::vector<Tensor> buffers) override {
    enqueue([&](cudaStream_t stream) { all_to_all_v_on_stream(send, send_counts, recv, recv_counts, type, stream); });
    return pending(std::move(buffers));
  }

 private:
  // Queues enqueue(stream_) after the compute stream's work so far.
  template <class F>
  void enqueue(F&& enqueue_on) {
    EG_CUDA_CHECK(cudaEventRecord(compute_ready_, cuda_context().compute));
    EG_CUDA_CHECK(cudaStreamWaitEvent(stream_, compute_ready_, 0));
    enqueue_on(stream_);
  }

  // Later compute-stream work waits for everything queued on stream_ so far.
  void join() {
    EG_CUDA_CHECK(cudaEventRecord(comm_done_, stream_));
    EG_CUDA_CHECK(cudaStreamWaitEvent(cuda_context().compute, comm_done_, 0));
  }

  // What was queued on stream_ so far, joined by the returned collective's wait().
  std::unique_ptr<PendingCollective> pending(std::vector<Tensor> buffers) {
    return std::make_unique<NcclPending>(stream_, std::move(buffers));
  }

  // The scratch of a started sum, freed as soon as the stream is done with it rather than at wait():
  // a backward pass starts every bucket before it waits for any, and all their scratch together would
  // be another copy of the gradients. Finished scratch is freed at every hand-over; above
  // kNcclScratchInFlightBytes the host waits for the oldest.
  void hand_over_scratch(Tensor scratch) {
    if (!scratch.defined()) return;
    while (!scratch_in_flight_.empty()) {
      const cudaError_t status = cudaEventQuery(scratch_in_flight_.front().done);
      if (status == cudaErrorNotReady) {
        (void)cudaGetLastError();  // "not ready" is an answer, not a failure for later checks to see
        break;
      }
      EG_CUDA_CHECK(status);
      release_oldest_scratch();
    }
    InFlightScratch s{nullptr, std::move(scratch)};
    EG_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    EG_CUDA_CHECK(cudaEventRecord(s.done, stream_));
    scratch_in_flight_bytes_ += static_cast<int64_t>(s.scratch.nbytes());
    scratch_in_flight_.push_back(std::move(s));
    while (scratch_in_flight_bytes_ > kNcclScratchInFlightBytes && scratch_in_flight_.size() > 1) {
      EG_CUDA_CHECK(cudaEventSynchronize(scratch_in_flight_.front().done));
      release_oldest_scratch();
    }
  }

  void release_oldest_scratch() {
    InFlightScratch& oldest = scratch_in_flight_.front();
    EG_CUDA_CHECK(cudaEventDestroy(oldest.done));
    scratch_in_flight_bytes_ -= static_cast<int64_t>(oldest.scratch.nbytes());
    scratch_in_flight_.pop_front();
  }

  // Rank r reduces block r of even_range(count): every rank sends it block r, r sums the P copies in
  // rank order, and every rank receives every summed block. Returns the scratch the queued work
  // uses (undefined for integer sums, which are exact in any order and use ncclAllReduce).
  Tensor enqueue_all_reduce_sum(void* data, int64_t count, CommType type) {
    if (!is_float(type)) {
      enqueue([&](cudaStream_t stream) {
        EG_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_type(type), ncclSum, comm_, stream));
      });
      return Tensor();
    }
    std::vector<int64_t> block_begin(size_), block_count(size_);
    for (int r = 0; r < size_; ++r) {
      const IndexRange block = even_range(count, size_, r);
      block_begin[r] = block.begin;
      block_count[r] = block.size();
    }
    const int64_t mine = block_count[rank_];
    Tensor copies = device_scratch(mine * size_, type);
    enqueue([&](cudaStream_t stream) {
      all_to_all_v_on_stream(data, block_count, copies.raw(), std::vector<int64_t>(size_, mine), type, stream);
      void* my_block = at(data, block_begin[rank_], type);
      ordered_block_sum(copies.raw(), my_block, mine, size_, type, stream);
      // All-gather of uneven blocks, in place: each rank's block is already where it belongs.
      EG_NCCL_CHECK(ncclGroupStart());
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        if (mine > 0) EG_NCCL_CHECK(ncclSend(my_block, mine, nccl_type(type), peer, comm_, stream));
        if (block_count[peer] > 0)
          EG_NCCL_CHECK(ncclRecv(at(data, block_begin[peer], type), block_count[peer], nccl_type(type), peer,
                                 comm_, stream));
      }
      EG_NCCL_CHECK(ncclGroupEnd());
    });
    return copies;
  }

  // Point-to-point all-to-all of back-to-back blocks (the layout of Communicator::all_to_all_v); the
  // block a rank keeps is a device copy on the same stream.
  void all_to_all_v_on_stream(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                              const std::vector<int64_t>& recv_counts, CommType type, cudaStream_t stream) {
    EG_ASSERT(send_counts[rank_] == recv_counts[rank_], "all_to_all_v: rank ", rank_, " sends ",
              send_counts[rank_], " elements to itself but expects ", recv_counts[rank_]);
    int64_t send_offset = 0, recv_offset = 0;
    std::vector<int64_t> send_at(size_), recv_at(size_);
    for (int peer = 0; peer < size_; ++peer) {
      send_at[peer] = send_offset;
      recv_at[peer] = recv_offset;
      send_offset += send_counts[peer];
      recv_offset += recv_counts[peer];
    }
    if (send_counts[rank_] > 0)
      EG_CUDA_CHECK(cudaMemcpyAsync(at(recv, recv_at[rank_], type), at(send, send_at[rank_], type),
                                    send_counts[rank_] * comm_type_size(type), cudaMemcpyDeviceToDevice, stream));
    EG_NCCL_CHECK(ncclGroupStart());
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      if (send_counts[peer] > 0)
        EG_NCCL_CHECK(ncclSend(at(send, send_at[peer], type), send_counts[peer], nccl_type(type), peer, comm_, stream));
      if (recv_counts[peer] > 0)
        EG_NCCL_CHECK(ncclRecv(at(recv, recv_at[peer], type), recv_counts[peer], nccl_type(type), peer, comm_, stream));
    }
    EG_NCCL_CHECK(ncclGroupEnd());
  }

  ncclComm_t comm_;
  std::unique_ptr<Communicator> host_;
  int rank_, size_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t compute_ready_ = nullptr, comm_done_ = nullptr;
  struct InFlightScratch {
    cudaEvent_t done;  // recorded on stream_ after the work that uses the scratch
    Tensor scratch;
  };
  std::deque<InFlightScratch> scratch_in_flight_;
  int64_t scratch_in_flight_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> host_group) {
  EG_CHECK(host_group->device() == Device::CPU, "an NCCL communicator bootstraps over a host communicator, not ",
           host_group->backend());
  const CudaContext& ctx = cuda_context();  // this rank's GPU, chosen before (make_device_communicator)
  std::vector<uint8_t> id_bytes(sizeof(ncclUniqueId));
  if (host_group->rank() == 0) {
    ncclUniqueId id;
    EG_NCCL_CHECK(ncclGetUniqueId(&id));
    std::memcpy(id_bytes.data(), &id, sizeof(id));
  }
  host_group->broadcast(id_bytes, 0);
  host_group->barrier();  // every rank holds the id before any starts the (blocking) initialization
  ncclUniqueId id;
  std::memcpy(&id, id_bytes.data(), sizeof(id));
  EG_CUDA_CHECK(cudaSetDevice(ctx.device));
  ncclComm_t comm = nullptr;
  EG_NCCL_CHECK(ncclCommInitRank(&comm, host_group->size(), id, host_group->rank()));
  return std::make_unique<NcclCommunicator>(comm, std::move(host_group));
}

}  // namespace engram
