#include "parallel/communicator.h"

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <numeric>

#include "runtime/trace_range.h"

#ifdef ENGRAM_HAVE_CUDA
#include "runtime/cuda/device.h"
#endif

namespace engram {

#ifdef ENGRAM_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_world_communicator(int* argc, char*** argv);  // mpi_communicator.cpp
#endif

size_t comm_type_size(CommType type) {
  switch (type) {
    case CommType::Byte:
      return 1;
    case CommType::I32:
      return 4;
    case CommType::I64:
      return 8;
    case CommType::F32:
      return 4;
    case CommType::F64:
      return 8;
  }
  return 0;
}

const char* comm_type_name(CommType type) {
  switch (type) {
    case CommType::Byte:
      return "byte";
    case CommType::I32:
      return "i32";
    case CommType::I64:
      return "i64";
    case CommType::F32:
      return "f32";
    case CommType::F64:
      return "f64";
  }
  return "?";
}

CommType comm_type_of(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return CommType::F32;
    case DType::I32:
      return CommType::I32;
    case DType::I64:
      return CommType::I64;
    case DType::BF16:
      return CommType::Byte;
  }
  return CommType::Byte;
}

namespace {

// Elements of `type` a tensor holds (bf16 travels as bytes).
int64_t comm_count(const Tensor& tensor) {
  return static_cast<int64_t>(tensor.nbytes() / comm_type_size(comm_type_of(tensor.dtype())));
}

// Elements per dim-0 row: the product of the other dimensions (1 for a 1-d tensor).
int64_t row_elements(const Tensor& tensor) {
  int64_t n = 1;
  for (int i = 1; i < tensor.ndim(); ++i) n *= tensor.dim(i);
  return n * static_cast<int64_t>(dtype_size(tensor.dtype()) / comm_type_size(comm_type_of(tensor.dtype())));
}

Shape with_rows(const Tensor& tensor, int64_t rows) {
  Shape shape = tensor.shape();
  shape[0] = rows;
  return shape;
}

std::vector<int64_t> scaled(const std::vector<int64_t>& counts, int64_t factor) {
  std::vector<int64_t> out(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) out[i] = counts[i] * factor;
  return out;
}

size_t bytes_of(int64_t count, CommType type) { return static_cast<size_t>(count) * comm_type_size(type); }

// A buffer of a collective as the communicator's device sees it: the caller's memory when it lives
// there, else a staging copy on that device, filled from the caller's memory when the collective
// reads the buffer, and copied back by write_back when it writes it. Host <-> device copies run on
// the compute stream and wait for it (runtime/cuda/device.h), so the staged data is the tensor's
// finished contents and the copy back is complete when the collective call returns. (Pinned staging
// buffers and copies overlapped with the collective would be faster; not needed yet.)
class StagedBuffer {
 public:
  StagedBuffer(Device comm_device, Device where, const void* data, size_t bytes, bool read)
      : data_(const_cast<void*>(data)), where_(where), bytes_(bytes) {
    if (where == comm_device) return;
    staged_ = Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::I64, comm_device);
    if (read) copy_bytes(staged_.raw(), comm_device, data_, where_, bytes_);
  }
  void* get() const { return staged_.defined() ? staged_.raw() : data_; }
  void write_back() {
    if (staged_.defined()) copy_bytes(data_, where_, staged_.raw(), staged_.device(), bytes_);
  }

 private:
  static void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
#ifdef ENGRAM_HAVE_CUDA
    cuda_copy(dst, dst_device, src, src_device, bytes);
#else
    EG_FAIL("a collective between ", device_name(src_device), " and ", device_name(dst_device),
            " memory: this build has no CUDA backend");
#endif
  }

  void* data_;
  Device where_;
  size_t bytes_;
  Tensor staged_;
};

class CompletedCollective final : public PendingCollective {
 public:
  void wait() override {}
};

}  // namespace

std::unique_ptr<PendingCollective> Communicator::completed() { return std::make_unique<CompletedCollective>(); }

int64_t Communicator::total(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

void Communicator::check_root(int root, const char* what) const {
  EG_CHECK(root >= 0 && root < size(), what, ": root rank ", root, " is outside the group's ", size(),
           " ranks");
}

void Communicator::check_summable(CommType type, const char* what) const {
  EG_CHECK(type != CommType::Byte, what, ": cannot sum ", comm_type_name(type),
           " elements (f32, f64, i32 or i64 only)");
}

void Communicator::check_counts(const std::vector<int64_t>& send_counts,
                                const std::vector<int64_t>& recv_counts) const {
  EG_ASSERT(static_cast<int>(send_counts.size()) == size() && static_cast<int>(recv_counts.size()) == size(),
            "all_to_all_v needs one send and one receive count per rank of the group (", size(), "), got ",
            send_counts.size(), " and ", recv_counts.size());
  for (int r = 0; r < size(); ++r)
    EG_ASSERT(send_counts[r] >= 0 && recv_counts[r] >= 0, "all_to_all_v: negative count for rank ", r);
}

void Communicator::check_tensor(const Tensor& tensor, const char* what) const {
  EG_ASSERT(tensor.defined(), what, ": undefined tensor");
}

std::unique_ptr<Communicator> Communicator::split(int color, int key) {
  EG_CHECK(color >= 0, "split: color ", color, " must be >= 0");
  return do_split(color, key);
}

Communicator* Communicator::host_group_for(Device where) {
  return where == Device::CPU && device() != Device::CPU ? host_group() : nullptr;
}

void Communicator::broadcast_on(Device where, void* data, int64_t count, CommType type, int root) {
  if (Communicator* host = host_group_for(where)) return host->broadcast_on(where, data, count, type, root);
  const TraceRange range("broadcast");
  check_root(root, "broadcast");
  if (size() == 1) return;
  StagedBuffer buffer(device(), where, data, bytes_of(count, type), true);
  do_broadcast(buffer.get(), count, type, root);
  buffer.write_back();
}

void Communicator::all_reduce_sum_on(Device where, void* data, int64_t count, CommType type) {
  if (Communicator* host = host_group_for(where)) return host->all_reduce_sum_on(where, data, count, type);
  const TraceRange range("all_reduce_sum");
  check_summable(type, "all_reduce_sum");
  if (size() == 1) return;
  StagedBuffer buffer(device(), where, data, bytes_of(count, type), true);
  do_all_reduce_sum(buffer.get(), count, type);
  buffer.write_back();
}

void Communicator::reduce_scatter_sum_on(Device where, const void* send, void* recv, int64_t recv_count,
                                         CommType type) {
  if (Communicator* host = host_group_for(where))
    return host->reduce_scatter_sum_on(where, send, recv, recv_count, type);
  const TraceRange range("reduce_scatter_sum");
  check_summable(type, "reduce_scatter_sum");
  const StagedBuffer in(device(), where, send, bytes_of(recv_count * size(), type), true);
  StagedBuffer out(device(), where, recv, bytes_of(recv_count, type), false);
  do_reduce_scatter_sum(in.get(), out.get(), recv_count, type);
  out.write_back();
}

void Communicator::all_gather_on(Device where, const void* send, void* recv, int64_t send_count, CommType type) {
  if (Communicator* host = host_group_for(where)) return host->all_gather_on(where, send, recv, send_count, type);
  const TraceRange range("all_gather");
  const StagedBuffer in(device(), where, send, bytes_of(send_count, type), true);
  StagedBuffer out(device(), where, recv, bytes_of(send_count * size(), type), false);
  do_all_gather(in.get(), out.get(), send_count, type);
  out.write_back();
}

void Communicator::all_to_all_v_on(Device where, const void* send, const std::vector<int64_t>& send_counts,
                                   void* recv, const std::vector<int64_t>& recv_counts, CommType type) {
  if (Communicator* host = host_group_for(where))
    return host->all_to_all_v_on(where, send, send_counts, recv, recv_counts, type);
  const TraceRange range("all_to_all_v");
  check_counts(send_counts, recv_counts);
  const StagedBuffer in(device(), where, send, bytes_of(total(send_counts), type), true);
  StagedBuffer out(device(), where, recv, bytes_of(total(recv_counts), type), false);
  do_all_to_all_v(in.get(), send_counts, out.get(), recv_counts, type);
  out.write_back();
}

void Communicator::broadcast(Tensor& tensor, int root) {
  check_tensor(tensor, "broadcast");
  broadcast_on(tensor.device(), tensor.raw(), comm_count(tensor), comm_type_of(tensor.dtype()), root);
}

void Communicator::all_reduce_sum(Tensor& tensor) {
  check_tensor(tensor, "all_reduce_sum");
  all_reduce_sum_on(tensor.device(), tensor.raw(), comm_count(tensor), comm_type_of(tensor.dtype()));
}

std::unique_ptr<PendingCollective> Communicator::start_all_reduce_sum(Tensor& tensor) {
  const TraceRange range("start all_reduce_sum");
  check_tensor(tensor, "all_reduce_sum");
  // One rank (nothing to add) and a tensor staged through copies (which wait for the collective
  // anyway) complete at once; all_reduce_sum checks the type either way.
  if (size() == 1 || tensor.device() != device()) {
    all_reduce_sum(tensor);
    return completed();
  }
  const CommType type = comm_type_of(tensor.dtype());
  check_summable(type, "all_reduce_sum");
  return do_start_all_reduce_sum(tensor.raw(), comm_count(tensor), type, {tensor});
}

Tensor Communicator::reduce_scatter_sum(const Tensor& tensor) {
  check_tensor(tensor, "reduce_scatter_sum");
  EG_CHECK(tensor.ndim() >= 1 && tensor.dim(0) % size() == 0, "reduce_scatter_sum: tensor ",
           tensor.describe(), " needs a first dimension divisible by the group size ", size());
  Tensor out = Tensor::empty(with_rows(tensor, tensor.dim(0) / size()), tensor.dtype(), tensor.device());
  reduce_scatter_sum_on(tensor.device(), tensor.raw(), out.raw(), comm_count(out), comm_type_of(tensor.dtype()));
  return out;
}

Tensor Communicator::all_gather(const Tensor& tensor) {
  check_tensor(tensor, "all_gather");
  EG_CHECK(tensor.ndim() >= 1, "all_gather: tensor ", tensor.describe(), " needs a first dimension");
  Tensor out = Tensor::empty(with_rows(tensor, tensor.dim(0) * size()), tensor.dtype(), tensor.device());
  all_gather_on(tensor.device(), tensor.raw(), out.raw(), comm_count(tensor), comm_type_of(tensor.dtype()));
  return out;
}

Tensor Communicator::rows_receiver(const Tensor& send, const std::vector<int64_t>& send_rows,
                                   const std::vector<int64_t>& recv_rows) const {
  check_tensor(send, "all_to_all_v_rows");
  check_counts(send_rows, recv_rows);
  EG_ASSERT(send.ndim() >= 1 && send.dim(0) == total(send_rows), "all_to_all_v_rows: send ", send.describe(),
            " must have the ", total(send_rows), " rows its counts name");
  return Tensor::empty(with_rows(send, total(recv_rows)), send.dtype(), send.device());
}

Tensor Communicator::all_to_all_v_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                                       const std::vector<int64_t>& recv_rows) {
  Tensor out = rows_receiver(send, send_rows, recv_rows);
  const int64_t width = row_elements(send);
  all_to_all_v_on(send.device(), send.raw(), scaled(send_rows, width), out.raw(), scaled(recv_rows, width),
                  comm_type_of(send.dtype()));
  return out;
}

StartedRows Communicator::start_all_to_all_v_rows(const Tensor& send, const std::vector<int64_t>& send_rows,
                                                  const std::vector<int64_t>& recv_rows) {
  const TraceRange range("start all_to_all_v_rows");
  if (send.device() != device()) return {all_to_all_v_rows(send, send_rows, recv_rows), completed()};
  Tensor out = rows_receiver(send, send_rows, recv_rows);
  const int64_t width = row_elements(send);
  std::unique_ptr<PendingCollective> done =
      do_start_all_to_all_v(send.raw(), scaled(send_rows, width), out.raw(), scaled(recv_rows, width),
                            comm_type_of(send.dtype()), {send, out});
  return {std::move(out), std::move(done)};
}

std::vector<int64_t> Communicator::exchange_counts(const std::vector<int64_t>& send_counts) {
  const TraceRange range("exchange_counts");
  EG_ASSERT(static_cast<int>(send_counts.size()) == size(), "exchange_counts needs one count per rank (",
            size(), "), got ", send_counts.size());
  std::vector<int64_t> recv_counts(size());
  const std::vector<int64_t> one_each(size(), 1);
  all_to_all_v_on(Device::CPU, send_counts.data(), one_each, recv_counts.data(), one_each, CommType::I64);
  return recv_counts;
}

std::unique_ptr<PendingCollective> Communicator::do_start_all_reduce_sum(void* data, int64_t count, CommType type,
                                                                         std::vector<Tensor> /*buffers*/) {
  do_all_reduce_sum(data, count, type);
  return completed();
}

std::unique_ptr<PendingCollective> Communicator::do_start_all_to_all_v(const void* send,
                                                                       const std::vector<int64_t>& send_counts,
                                                                       void* recv,
                                                                       const std::vector<int64_t>& recv_counts,
                                                                       CommType type,
                                                                       std::vector<Tensor> /*buffers*/) {
  do_all_to_all_v(send, send_counts, recv, recv_counts, type);
  return completed();
}

void Communicator::abort_all(const std::string& message) {
  do_abort_all(message);
  std::_Exit(1);  // not reached: do_abort_all ends the process
}

void Communicator::print_abort_message(int world_rank, int world_size, const std::string& message) {
  std::fflush(stdout);
  std::fprintf(stderr, "engram: rank %d of %d failed: %s\n", world_rank, world_size, message.c_str());
  std::fflush(stderr);
}

bool built_with_mpi() {
#ifdef ENGRAM_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool built_with_nccl() {
#ifdef ENGRAM_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

namespace {

// The first of `names` set in this process's environment, else nullptr.
const char* first_set(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (std::getenv(name) != nullptr) return name;
  return nullptr;
}

// Open MPI, MPICH/Hydra and PMIx launchers (srun --mpi=pmix) each set one of these.
bool started_by_an_mpi_launcher() { return first_set({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) != nullptr; }

}  // namespace

std::unique_ptr<Communicator> make_world_communicator(int* argc, char*** argv) {
#ifdef ENGRAM_HAVE_MPI
  if (started_by_an_mpi_launcher()) return make_mpi_world_communicator(argc, argv);
#endif
  return make_local_communicator();
}

void check_world_spans_the_launch(const Communicator& world) {
  if (world.size() != 1) return;
  // The launcher's task count: an MPI launcher's own, else (no MPI launcher) an srun step's.
  const char* var = first_set({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"});
  if (var == nullptr && !started_by_an_mpi_launcher()) var = first_set({"SLURM_STEP_NUM_TASKS"});
  if (var == nullptr) return;
  const std::string tasks = std::getenv(var);
  if (tasks == "1") return;
  EG_FAIL("this process was started as one of ", var, " = ", tasks, " tasks but is a world of one: ",
          built_with_mpi() ? "its launcher set no MPI environment (use srun --mpi=pmix, or mpirun)"
                           : "this build has no MPI (configure where an MPI library is found)",
          "; otherwise every task would train alone into the same run directory");
}

int run_or_abort_all(Communicator& world, const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    world.abort_all(e.what());
  }
}

}  // namespace engram
