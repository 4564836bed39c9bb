// The group of one process: a single-rank run without MPI. Every collective is the identity; the
// ones with separate send and receive buffers copy.
#include <cstdlib>
#include <cstring>

#include "parallel/communicator.h"

namespace engram {

namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Device device() const override { return Device::CPU; }
  std::string backend() const override { return "local"; }
  void barrier() override {}

 protected:
  std::unique_ptr<Communicator> do_split(int color, int key) override {
    return std::make_unique<LocalCommunicator>();
  }
  std::unique_ptr<Communicator> do_split_node() override { return std::make_unique<LocalCommunicator>(); }
  void do_abort_all(const std::string& message) override {
    print_abort_message(0, 1, message);
    std::_Exit(1);  // like MPI_Abort: no destructors run after a failure
  }

  void do_broadcast(void* data, int64_t count, CommType type, int root) override {}
  void do_all_reduce_sum(void* data, int64_t count, CommType type) override {}

  void do_reduce_scatter_sum(const void* send, void* recv, int64_t recv_count, CommType type) override {
    copy(send, recv, recv_count, type);
  }
  void do_all_gather(const void* send, void* recv, int64_t send_count, CommType type) override {
    copy(send, recv, send_count, type);
  }
  void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                       const std::vector<int64_t>& recv_counts, CommType type) override {
    EG_ASSERT(send_counts[0] == recv_counts[0], "all_to_all_v on one rank: sends ", send_counts[0],
              " elements to itself but expects ", recv_counts[0]);
    copy(send, recv, send_counts[0], type);
  }

 private:
  static void copy(const void* src, void* dst, int64_t count, CommType type) {
    if (count > 0) std::memcpy(dst, src, static_cast<size_t>(count) * comm_type_size(type));
  }
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() { return std::make_unique<LocalCommunicator>(); }

}  // namespace engram
