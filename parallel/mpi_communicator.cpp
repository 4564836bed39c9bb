// MPI communicator on host buffers (compiled only when the build found MPI).
//
// Determinism: reductions are MPI_Allreduce / MPI_Reduce_scatter_block with MPI_SUM on a fixed
// communicator. Open MPI picks its algorithm from the group size and the message size only (never
// from timing), and every algorithm it has (recursive doubling, ring, Rabenseifner) combines the
// same partial sums in the same tree on every rank; float addition being commutative, all ranks
// end with bitwise-identical results, and the same inputs give the same results on every call.
// (Forcing other algorithms through coll MCA parameters keeps this as long as they stay fixed.)
//
// Errors: communicators keep MPI_ERRORS_ARE_FATAL, so an MPI failure ends the whole job instead of
// leaving ranks blocked; user errors go through abort_all.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <mutex>

#include "parallel/communicator.h"

namespace engram {

namespace {

// MPI_Init on acquisition by the first communicator, MPI_Finalize when the last one is gone (every
// communicator holds a reference, so MPI_Comm_free always runs before MPI_Finalize).
class MpiRuntime {
 public:
  static std::shared_ptr<MpiRuntime> acquire(int* argc, char*** argv) {
    static std::mutex mutex;
    static std::weak_ptr<MpiRuntime> current;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto runtime = current.lock()) return runtime;
    int finalized = 0;
    MPI_Finalized(&finalized);
    EG_CHECK(!finalized,
             "MPI was already finalized in this process: keep the world communicator alive for "
             "the whole program");
    auto runtime = std::shared_ptr<MpiRuntime>(new MpiRuntime(argc, argv));
    current = runtime;
    return runtime;
  }

  ~MpiRuntime() {
    if (owns_init_) MPI_Finalize();
  }

 private:
  MpiRuntime(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;  // someone else's MPI_Init: they finalize too
    int provided = 0;
    // Only the thread that made the communicator calls MPI (OpenBLAS threads never do).
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    owns_init_ = true;
  }
  bool owns_init_ = false;
};

MPI_Datatype mpi_type(CommType type) {
  switch (type) {
    case CommType::Byte:
      return MPI_BYTE;
    case CommType::I32:
      return MPI_INT32_T;
    case CommType::I64:
      return MPI_INT64_T;
    case CommType::F32:
      return MPI_FLOAT;
    case CommType::F64:
      return MPI_DOUBLE;
  }
  return MPI_BYTE;
}

// MPI counts and displacements are ints.
int as_mpi_count(int64_t count, const char* what) {
  EG_CHECK(count <= INT_MAX, what, ": ", count, " elements exceed MPI's int count limit ", INT_MAX,
           "; split the exchange");
  return static_cast<int>(count);
}

// Counts as ints and their exclusive prefix sums (back-to-back blocks in rank order).
void mpi_counts(const std::vector<int64_t>& counts, std::vector<int>& out, std::vector<int>& displs) {
  out.resize(counts.size());
  displs.resize(counts.size());
  int64_t offset = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    out[r] = as_mpi_count(counts[r], "all_to_all_v count");
    displs[r] = as_mpi_count(offset, "all_to_all_v displacement");
    offset += counts[r];
  }
  as_mpi_count(offset, "all_to_all_v total");
}

// Buffers larger than an int count go in chunks (broadcast, all_reduce: element-wise independent).
constexpr int64_t kMaxChunk = int64_t{1} << 30;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::shared_ptr<MpiRuntime> runtime)
      : comm_(comm), runtime_(std::move(runtime)) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override { MPI_Comm_free(&comm_); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CPU; }
  std::string backend() const override { return "mpi"; }
  void barrier() override { MPI_Barrier(comm_); }

 protected:
  std::unique_ptr<Communicator> do_split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_Comm_split(comm_, color, key, &sub);
    return std::make_unique<MpiCommunicator>(sub, runtime_);
  }
  std::unique_ptr<Communicator> do_split_node() override {
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &sub);
    return std::make_unique<MpiCommunicator>(sub, runtime_);
  }

  void do_abort_all(const std::string& message) override {
    int world_rank = 0, world_size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    print_abort_message(world_rank, world_size, message);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

  void do_broadcast(void* data, int64_t count, CommType type, int root) override {
    char* p = static_cast<char*>(data);
    for (int64_t done = 0; done < count; done += kMaxChunk) {
      const int n = static_cast<int>(std::min(kMaxChunk, count - done));
      MPI_Bcast(p + done * comm_type_size(type), n, mpi_type(type), root, comm_);
    }
  }

  void do_all_reduce_sum(void* data, int64_t count, CommType type) override {
    char* p = static_cast<char*>(data);
    for (int64_t done = 0; done < count; done += kMaxChunk) {
      const int n = static_cast<int>(std::min(kMaxChunk, count - done));
      MPI_Allreduce(MPI_IN_PLACE, p + done * comm_type_size(type), n, mpi_type(type), MPI_SUM, comm_);
    }
  }

  void do_reduce_scatter_sum(const void* send, void* recv, int64_t recv_count, CommType type) override {
    MPI_Reduce_scatter_block(send, recv, as_mpi_count(recv_count, "reduce_scatter_sum"), mpi_type(type),
                             MPI_SUM, comm_);
  }

  void do_all_gather(const void* send, void* recv, int64_t send_count, CommType type) override {
    as_mpi_count(send_count * size_, "all_gather total");
    const int n = as_mpi_count(send_count, "all_gather");
    MPI_Allgather(send, n, mpi_type(type), recv, n, mpi_type(type), comm_);
  }

  void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                       const std::vector<int64_t>& recv_counts, CommType type) override {
    std::vector<int> scounts, sdispls, rcounts, rdispls;
    mpi_counts(send_counts, scounts, sdispls);
    mpi_counts(recv_counts, rcounts, rdispls);
    MPI_Alltoallv(send, scounts.data(), sdispls.data(), mpi_type(type), recv, rcounts.data(), rdispls.data(),
                  mpi_type(type), comm_);
  }

 private:
  MPI_Comm comm_;
  std::shared_ptr<MpiRuntime> runtime_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world_communicator(int* argc, char*** argv) {
  auto runtime = MpiRuntime::acquire(argc, argv);
  // A private copy of the world, so that no other library's messages can match ours.
  MPI_Comm world = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &world);
  return std::make_unique<MpiCommunicator>(world, std::move(runtime));
}

}  // namespace engram
