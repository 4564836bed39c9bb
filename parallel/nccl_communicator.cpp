// The NCCL communicator (parallel/nccl_communicator.h): raw collectives on device buffers, queued on
// the communication stream between two events that order it after, and before, the compute stream.
//
// Memory: scratch buffers come from the device allocator, whose reuse relies on compute-stream order.
// Every collective makes the compute stream wait for the communication stream before it returns, so
// a block freed afterwards is reused only by work queued after the collective finished.
#include <nccl.h>

#include <cstring>
#include <type_traits>

#include "parallel/nccl_communicator.h"
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

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, std::unique_ptr<Communicator> host)
      : comm_(comm), host_(std::move(host)), rank_(host_->rank()), size_(host_->size()) {
    int nccl_rank = -1, nccl_size = 0;
    EG_NCCL_CHECK(ncclCommUserRank(comm_, &nccl_rank));
    EG_NCCL_CHECK(ncclCommCount(comm_, &nccl_size));
    EG_ASSERT(nccl_rank == rank_ && nccl_size == size_, "NCCL rank ", nccl_rank, " of ", nccl_size,
              " for host rank ", rank_, " of ", size_);
    EG_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
    EG_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    // No throwing here: a failed run is already reporting its first error.
    (void)cudaStreamSynchronize(cuda_context().comm);
    ncclCommDestroy(comm_);
    (void)cudaEventDestroy(compute_ready_);
    (void)cudaEventDestroy(comm_done_);
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
  std::vector<int64_t> do_exchange_counts(const std::vector<int64_t>& send_counts) override {
    return host_->exchange_counts(send_counts);
  }

  void do_broadcast(void* data, int64_t count, CommType type, int root) override {
    on_comm_stream([&](cudaStream_t stream) {
      EG_NCCL_CHECK(ncclBroadcast(data, data, count, nccl_type(type), root, comm_, stream));
    });
  }

  void do_all_reduce_sum(void* data, int64_t count, CommType type) override {
    if (!is_float(type)) {
      on_comm_stream([&](cudaStream_t stream) {
        EG_NCCL_CHECK(ncclAllReduce(data, data, count, nccl_type(type), ncclSum, comm_, stream));
      });
      return;
    }
    // Rank r reduces block r of even_range(count): every rank sends it block r, r sums the P copies
    // in rank order, and every rank receives every summed block.
    std::vector<int64_t> block_begin(size_), block_count(size_);
    for (int r = 0; r < size_; ++r) {
      const IndexRange block = even_range(count, size_, r);
      block_begin[r] = block.begin;
      block_count[r] = block.size();
    }
    const int64_t mine = block_count[rank_];
    const Tensor copies = device_scratch(mine * size_, type);
    on_comm_stream([&](cudaStream_t stream) {
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
  }

  void do_reduce_scatter_sum(const void* send, void* recv, int64_t recv_count, CommType type) override {
    if (!is_float(type)) {
      on_comm_stream([&](cudaStream_t stream) {
        EG_NCCL_CHECK(ncclReduceScatter(send, recv, recv_count, nccl_type(type), ncclSum, comm_, stream));
      });
      return;
    }
    // Block r of every rank to rank r, then the P copies added in rank order.
    const std::vector<int64_t> blocks(size_, recv_count);
    const Tensor copies = device_scratch(recv_count * size_, type);
    on_comm_stream([&](cudaStream_t stream) {
      all_to_all_v_on_stream(send, blocks, copies.raw(), blocks, type, stream);
      ordered_block_sum(copies.raw(), recv, recv_count, size_, type, stream);
    });
  }

  void do_all_gather(const void* send, void* recv, int64_t send_count, CommType type) override {
    on_comm_stream([&](cudaStream_t stream) {
      EG_NCCL_CHECK(ncclAllGather(send, recv, send_count, nccl_type(type), comm_, stream));
    });
  }

  void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                       const std::vector<int64_t>& recv_counts, CommType type) override {
    on_comm_stream([&](cudaStream_t stream) {
      all_to_all_v_on_stream(send, send_counts, recv, recv_counts, type, stream);
    });
  }

 private:
  // Queues enqueue(comm stream) after the compute stream's work so far; later compute-stream work
  // waits for it.
  template <class F>
  void on_comm_stream(F&& enqueue) {
    const CudaContext& ctx = cuda_context();
    EG_CUDA_CHECK(cudaEventRecord(compute_ready_, ctx.compute));
    EG_CUDA_CHECK(cudaStreamWaitEvent(ctx.comm, compute_ready_, 0));
    enqueue(ctx.comm);
    EG_CUDA_CHECK(cudaEventRecord(comm_done_, ctx.comm));
    EG_CUDA_CHECK(cudaStreamWaitEvent(ctx.compute, comm_done_, 0));
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
  cudaEvent_t compute_ready_ = nullptr, comm_done_ = nullptr;
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
