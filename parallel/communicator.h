#pragma once
// Communicator: the collectives a rank group needs for data, expert and table parallelism.
//
// Backends implement a small set of raw collectives on buffers of the backend's device (host memory
// for Local and MPI; device memory for NCCL, parallel/nccl_communicator.h) with element counts and an
// element type. The public API wraps them for typed pointers, vectors and Tensors and checks
// arguments once for every backend. Typed pointers are passed as they are, so they must live where
// device() says. Vectors and scalars are host memory and Tensors live on their own device: when that
// is not device(), the collective runs on a staging copy on device() (copied in before, out after;
// communicator.cpp). That is how several ranks sharing one GPU run (MPI on host copies of CUDA
// tensors). Host buffers of an NCCL group (metrics, counts, table ids) take its host_group(), the MPI
// group it was made from, instead: no copies, and no wait behind the collectives queued on its
// stream. exchange_counts always works on host counts.
//
// Ordering contract (what makes results independent of timing, DESIGN.md decisions 4 and 5):
// - all_gather and all_to_all_v receive buffers are ordered by source rank;
// - all_reduce_sum / reduce_scatter_sum give bitwise-identical results on every rank, and the same
//   result for the same inputs on the same group, whatever the arrival order of messages.
// Every rank of a group must call the same collectives in the same order.
//
// Started collectives (start_all_reduce_sum, start_all_to_all_v_rows) let the caller go on while the
// data moves: on NCCL they run on the group's communication stream while the compute stream does
// other work, which is how the gradient all-reduce overlaps the backward pass and the Engram lookups
// overlap the first blocks. The host backends complete them before start returns. Either way the
// caller waits for the PendingCollective before it touches the buffers again, and the results are the
// blocking collectives' results, bit for bit.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/tensor.h"

namespace engram {

// Element types a collective moves. Byte moves anything (e.g. bf16 rows) but cannot be summed.
enum class CommType : uint8_t { Byte, I32, I64, F32, F64 };
size_t comm_type_size(CommType type);
const char* comm_type_name(CommType type);
CommType comm_type_of(DType dtype);  // BF16 maps to Byte (2 per element)

template <class T>
constexpr CommType comm_type_of();
template <>
constexpr CommType comm_type_of<uint8_t>() {
  return CommType::Byte;
}
template <>
constexpr CommType comm_type_of<int32_t>() {
  return CommType::I32;
}
template <>
constexpr CommType comm_type_of<int64_t>() {
  return CommType::I64;
}
template <>
constexpr CommType comm_type_of<float>() {
  return CommType::F32;
}
template <>
constexpr CommType comm_type_of<double>() {
  return CommType::F64;
}

// A started collective. It keeps its buffers alive until it completes. wait() makes its results
// visible to the caller's later work: on the host backends it has already completed; on NCCL, later
// compute-stream work waits for the communication stream (the host does not). Until wait() neither
// the host nor the compute stream may write the buffers it reads or touch those it writes. Destroying
// one that was not waited for waits (so an exception unwinding past it leaves no transfer in flight
// against freed memory).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

// A started all_to_all_v_rows: `rows` holds the received rows once `done` has been waited for.
struct StartedRows {
  Tensor rows;
  std::unique_ptr<PendingCollective> done;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;        // where the buffers of the collectives live
  virtual std::string backend() const = 0;  // "local", "mpi", "nccl"
  virtual void barrier() = 0;

  // A new group per distinct color (>= 0), ranks ordered by (key, rank in this group). Collective over
  // this group: every rank calls it, in the same order relative to the other collectives.
  std::unique_ptr<Communicator> split(int color, int key);
  // A new group of the ranks of this group on this machine (sharing its memory and GPUs), ordered as
  // here; its rank is the local rank that picks a GPU. Collective over this group.
  std::unique_ptr<Communicator> split_node() { return do_split_node(); }

  // Prints "engram: rank R of W failed: <message>" to stderr and ends every process of the job with
  // exit code 1 (MPI_Abort), so a failing rank never leaves the others waiting in a collective.
  [[noreturn]] void abort_all(const std::string& message);

  // ---- broadcast: root's buffer to every rank (counts must agree) ----
  template <class T>
  void broadcast(T* data, int64_t count, int root) {
    broadcast_on(device(), data, count, comm_type_of<T>(), root);
  }
  template <class T>
  void broadcast(std::vector<T>& values, int root) {
    broadcast_on(Device::CPU, values.data(), ssize(values), comm_type_of<T>(), root);
  }
  void broadcast(Tensor& tensor, int root);

  // ---- all_reduce_sum, in place ----
  template <class T>
  void all_reduce_sum(T* data, int64_t count) {
    all_reduce_sum_on(device(), data, count, comm_type_of<T>());
  }
  template <class T>
  void all_reduce_sum(std::vector<T>& values) {
    all_reduce_sum_on(Device::CPU, values.data(), ssize(values), comm_type_of<T>());
  }
  template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
  T all_reduce_sum(T value) {
    all_reduce_sum_on(Device::CPU, &value, 1, comm_type_of<T>());
    return value;
  }
  void all_reduce_sum(Tensor& tensor);
  // Started: the same sum, in place, once the returned collective is waited for.
  std::unique_ptr<PendingCollective> start_all_reduce_sum(Tensor& tensor);

  // ---- reduce_scatter_sum: send holds size()·recv_count elements; rank r receives the sum over
  // ranks of block r ----
  template <class T>
  void reduce_scatter_sum(const T* send, T* recv, int64_t recv_count) {
    reduce_scatter_sum_on(device(), send, recv, recv_count, comm_type_of<T>());
  }
  // tensor [size()·k, ...] -> [k, ...]
  Tensor reduce_scatter_sum(const Tensor& tensor);

  // ---- all_gather: every rank contributes send_count elements; recv holds them by source rank ----
  template <class T>
  void all_gather(const T* send, T* recv, int64_t send_count) {
    all_gather_on(device(), send, recv, send_count, comm_type_of<T>());
  }
  template <class T>
  std::vector<T> all_gather(const std::vector<T>& values) {
    std::vector<T> out(values.size() * size());
    all_gather_on(Device::CPU, values.data(), out.data(), ssize(values), comm_type_of<T>());
    return out;
  }
  // tensor [k, ...] (same shape on every rank) -> [size()·k, ...]
  Tensor all_gather(const Tensor& tensor);

  // ---- all_to_all_v: send holds send_counts[d] elements for each destination d, back to back in
  // destination order; recv receives recv_counts[s] elements from each source s, back to back in
  // source order. recv_counts must be what the sources send (see exchange_counts). ----
  template <class T>
  void all_to_all_v(const T* send, const std::vector<int64_t>& send_counts, T* recv,
                    const std::vector<int64_t>& recv_counts) {
    all_to_all_v_on(device(), send, send_counts, recv, recv_counts, comm_type_of<T>());
  }
  template <class T>
  std::vector<T> all_to_all_v(const std::vector<T>& send, const std::vector<int64_t>& send_counts,
                              const std::vector<int64_t>& recv_counts) {
    EG_ASSERT(ssize(send) == total(send_counts), "all_to_all_v: send holds ", send.size(),
              " elements, counts sum to ", total(send_counts));
    std::vector<T> out(total(recv_counts));
    all_to_all_v_on(Device::CPU, send.data(), send_counts, out.data(), recv_counts, comm_type_of<T>());
    return out;
  }
  // Rows of a tensor [n, ...]: send_rows[d] consecutive rows go to rank d; returns [Σ recv_rows, ...].
  Tensor all_to_all_v_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows);
  StartedRows start_all_to_all_v_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                                      const std::vector<int64_t>& recv_rows);

  // What every source will send to this rank, given what this rank sends to every destination.
  // Counts are host metadata on every backend.
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts);

  static int64_t total(const std::vector<int64_t>& counts);
  // Of per-rank counts, the part that crosses to other ranks (traffic metrics).
  int64_t to_others(const std::vector<int64_t>& counts) const { return total(counts) - counts[rank()]; }

 protected:
  virtual std::unique_ptr<Communicator> do_split(int color, int key) = 0;
  virtual std::unique_ptr<Communicator> do_split_node() = 0;
  // Raw collectives on buffers of device(). Called only with valid arguments; counts in elements.
  // all_reduce is in place; the others never alias send and recv.
  virtual void do_broadcast(void* data, int64_t count, CommType type, int root) = 0;
  virtual void do_all_reduce_sum(void* data, int64_t count, CommType type) = 0;
  virtual void do_reduce_scatter_sum(const void* send, void* recv, int64_t recv_count, CommType type) = 0;
  virtual void do_all_gather(const void* send, void* recv, int64_t send_count, CommType type) = 0;
  virtual void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                               const std::vector<int64_t>& recv_counts, CommType type) = 0;
  // Started raw collectives on buffers of device(), with the tensors that hold them (`buffers`: the
  // pending collective keeps them alive). The defaults run the blocking ones and return a completed
  // collective; a backend that can overlap overrides them.
  virtual std::unique_ptr<PendingCollective> do_start_all_reduce_sum(void* data, int64_t count, CommType type,
                                                                     std::vector<Tensor> buffers);
  virtual std::unique_ptr<PendingCollective> do_start_all_to_all_v(const void* send,
                                                                   const std::vector<int64_t>& send_counts,
                                                                   void* recv,
                                                                   const std::vector<int64_t>& recv_counts,
                                                                   CommType type, std::vector<Tensor> buffers);
  // A collective that completed already.
  static std::unique_ptr<PendingCollective> completed();
  // A group of the same ranks over host memory, which collectives on host buffers take instead of
  // being staged through device() (and queued behind this group's device collectives): NCCL's MPI
  // group. nullptr (the default) where device() is the host, or where there is none.
  virtual Communicator* host_group() { return nullptr; }
  // Prints the message (print_abort_message, with the rank in the world) and ends the whole job.
  virtual void do_abort_all(const std::string& message) = 0;
  // The line abort_all prints, on stderr, flushed.
  static void print_abort_message(int world_rank, int world_size, const std::string& message);

 private:
  template <class T>
  static int64_t ssize(const std::vector<T>& v) {
    return static_cast<int64_t>(v.size());
  }
  // Every collective of the public API: checks, then the raw collective on buffers that live on
  // `where`: host buffers of a device group on its host_group() when it has one, else staged through
  // copies on device() when that differs.
  void broadcast_on(Device where, void* data, int64_t count, CommType type, int root);
  void all_reduce_sum_on(Device where, void* data, int64_t count, CommType type);
  void reduce_scatter_sum_on(Device where, const void* send, void* recv, int64_t recv_count, CommType type);
  void all_gather_on(Device where, const void* send, void* recv, int64_t send_count, CommType type);
  void all_to_all_v_on(Device where, const void* send, const std::vector<int64_t>& send_counts, void* recv,
                       const std::vector<int64_t>& recv_counts, CommType type);

  // host_group() for host buffers of a device group that has one, else nullptr (this group runs it).
  Communicator* host_group_for(Device where);
  void check_root(int root, const char* what) const;
  void check_summable(CommType type, const char* what) const;
  void check_counts(const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts) const;
  void check_tensor(const Tensor& tensor, const char* what) const;
  // The receive tensor of all_to_all_v_rows (on send's device), after checking the arguments.
  Tensor rows_receiver(const Tensor& send, const std::vector<int64_t>& send_rows,
                       const std::vector<int64_t>& recv_rows) const;
};

// A group of one: every collective is the identity (or a copy).
std::unique_ptr<Communicator> make_local_communicator();

// True when this build has the MPI backend.
bool built_with_mpi();
// True when this build has the NCCL backend (CUDA builds that found NCCL).
bool built_with_nccl();

// The world: MPI when this build has MPI and the process was started by an MPI launcher (mpirun,
// mpiexec, srun: detected from their environment variables), else a Local group of one. MPI is
// initialized on the first call and finalized when the last communicator made from it is destroyed,
// so keep the world alive for the whole program.
std::unique_ptr<Communicator> make_world_communicator(int* argc, char*** argv);

// Refuses (engram::Error) a world of one in a process its launcher started as one of several tasks
// (mpirun under a build without MPI; srun without --mpi=pmix, whose tasks see no MPI launcher):
// those tasks would each train alone, all writing the same run directory.
void check_world_spans_the_launch(const Communicator& world);

// The communicator a run on `device` trains with, made from the world (parallel/device_communicator.cpp).
// Collective over world, which stays the caller's (keep it alive: it owns MPI). On CUDA it first
// gives this rank its GPU: local rank (world.split_node()) modulo the GPUs it sees, before the CUDA
// context is made (an error if it already exists on another GPU). Then:
// - NCCL over a copy of world, when this build has NCCL and no two ranks of a node use the same GPU
//   (compared by PCI bus id, so ranks that each see only their own GPU, e.g. under Slurm's per-task
//   GPU binding, count as separate; the ranks agree on it, so all take the same path);
// - else (CPU runs, ranks sharing a GPU, builds without NCCL) a copy of world, which moves CUDA
//   tensors through host copies.
std::unique_ptr<Communicator> make_device_communicator(Communicator& world, Device device);
// Whether two entries of `gpu_ids` (the GPU identity of each rank of a node) are the same GPU.
bool ranks_share_a_gpu(std::vector<std::string> gpu_ids);

// Runs body(); an exception on any rank ends the whole job through world.abort_all with the
// exception's message (instead of leaving the other ranks blocked in a collective). Returns body's
// value otherwise. The launchers wrap their main with it.
int run_or_abort_all(Communicator& world, const std::function<int()>& body);

}  // namespace engram
