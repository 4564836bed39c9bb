// Collectives on host buffers of a device group (NCCL) run on its host group (the MPI group it was
// made from), not staged through the device, and those on the group's own device memory stay on it:
// checked with a stand-in device group of 2 ranks over a recording host group, both recording which
// raw collectives they run.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace engram {
namespace {

// Rank 0 of 2 over host memory; each raw collective is recorded and answered as if rank 1 held
// what rank 0 holds.
class RecordingHostGroup : public Communicator {
 public:
  std::vector<std::string> calls;

  int rank() const override { return 0; }
  int size() const override { return 2; }
  Device device() const override { return Device::CPU; }
  std::string backend() const override { return "recording"; }
  void barrier() override { calls.push_back("barrier"); }

 protected:
  std::unique_ptr<Communicator> do_split(int, int) override { return nullptr; }
  std::unique_ptr<Communicator> do_split_node() override { return nullptr; }
  void do_abort_all(const std::string&) override {}
  void do_broadcast(void*, int64_t, CommType, int) override { calls.push_back("broadcast"); }
  void do_all_reduce_sum(void* data, int64_t count, CommType type) override {
    calls.push_back("all_reduce_sum");
    ASSERT_EQ(type, CommType::I64);
    for (int64_t i = 0; i < count; ++i) static_cast<int64_t*>(data)[i] *= 2;
  }
  void do_reduce_scatter_sum(const void*, void*, int64_t, CommType) override { calls.push_back("reduce_scatter"); }
  void do_all_gather(const void* send, void* recv, int64_t send_count, CommType type) override {
    calls.push_back("all_gather");
    const size_t bytes = static_cast<size_t>(send_count) * comm_type_size(type);
    for (int r = 0; r < 2; ++r) std::memcpy(static_cast<char*>(recv) + r * bytes, send, bytes);
  }
  void do_all_to_all_v(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                       const std::vector<int64_t>& recv_counts, CommType type) override {
    calls.push_back("all_to_all_v");
    EXPECT_EQ(send_counts, recv_counts);  // what rank 1 sends rank 0 mirrors what rank 0 sends it
    std::memcpy(recv, send, static_cast<size_t>(total(send_counts)) * comm_type_size(type));
  }
};

// A device group of the same 2 ranks that records its raw collectives (on device memory; here the
// buffers are host memory all the same, which the stand-in only counts and never reads).
class StandInDeviceGroup : public Communicator {
 public:
  explicit StandInDeviceGroup(RecordingHostGroup& host) : host_(host) {}
  std::vector<std::string> calls;

  int rank() const override { return 0; }
  int size() const override { return 2; }
  Device device() const override { return Device::CUDA; }
  std::string backend() const override { return "stand-in"; }
  void barrier() override {}

 protected:
  Communicator* host_group() override { return &host_; }
  std::unique_ptr<Communicator> do_split(int, int) override { return nullptr; }
  std::unique_ptr<Communicator> do_split_node() override { return nullptr; }
  void do_abort_all(const std::string&) override {}
  void do_broadcast(void*, int64_t, CommType, int) override { calls.push_back("broadcast"); }
  void do_all_reduce_sum(void*, int64_t, CommType) override { calls.push_back("all_reduce_sum"); }
  void do_reduce_scatter_sum(const void*, void*, int64_t, CommType) override { calls.push_back("reduce_scatter"); }
  void do_all_gather(const void*, void*, int64_t, CommType) override { calls.push_back("all_gather"); }
  void do_all_to_all_v(const void*, const std::vector<int64_t>&, void*, const std::vector<int64_t>&,
                       CommType) override {
    calls.push_back("all_to_all_v");
  }

 private:
  RecordingHostGroup& host_;
};

TEST(HostGroupRouting, HostBuffersOfADeviceGroupTakeItsHostGroup) {
  RecordingHostGroup host;
  StandInDeviceGroup group(host);

  EXPECT_EQ(group.exchange_counts({3, 4}), (std::vector<int64_t>{3, 4}));
  std::vector<int64_t> sums{5, -1};
  group.all_reduce_sum(sums);
  EXPECT_EQ(sums, (std::vector<int64_t>{10, -2}));
  EXPECT_EQ(group.all_reduce_sum<int64_t>(7), 14);
  EXPECT_EQ(group.all_gather(std::vector<int32_t>{8, 9}), (std::vector<int32_t>{8, 9, 8, 9}));
  EXPECT_EQ(group.all_to_all_v(std::vector<int64_t>{1, 2, 3}, {1, 2}, {1, 2}), (std::vector<int64_t>{1, 2, 3}));
  std::vector<int64_t> root_values{6};
  group.broadcast(root_values, 1);
  EXPECT_EQ(host.calls, (std::vector<std::string>{"all_to_all_v", "all_reduce_sum", "all_reduce_sum", "all_gather",
                                                  "all_to_all_v", "broadcast"}));
  EXPECT_TRUE(group.calls.empty());

  // Typed pointers live on the group's device: those collectives stay on it.
  std::vector<int64_t> on_device{1, 2};
  group.all_reduce_sum(on_device.data(), 2);
  group.broadcast(on_device.data(), 2, 0);
  EXPECT_EQ(group.calls, (std::vector<std::string>{"all_reduce_sum", "broadcast"}));
  EXPECT_EQ(host.calls.size(), 6u);
}

}  // namespace
}  // namespace engram
