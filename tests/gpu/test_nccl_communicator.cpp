// The NCCL communicator on one rank: the GPU machine has one GPU, and NCCL refuses two ranks on one
// GPU, so its multi-rank paths (the all-to-all under the float sums, the uneven in-place all-gather)
// run only on a machine with several GPUs. Here every collective of a one-rank group against its
// result (the input, bit for bit), through the Tensor, typed-pointer (device memory) and host-vector
// APIs, host vectors and CPU tensors (which take the host group), split groups and the device
// communicator factory.
// The rank-order sum kernel behind the float reductions is checked against a host loop adding the
// same blocks left to right, bit for bit, on inputs whose sums depend on the order (checked too).
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "tests/gpu/cuda_test_util.h"

#ifdef ENGRAM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#include "parallel/ordered_sum.h"
#include "runtime/cuda/context.h"

namespace engram {
namespace {

using testing_util::CudaTest;
using testing_util::expect_bitwise_equal_to_cpu;

class NcclCommunicatorTest : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    comm_ = make_nccl_communicator(make_local_communicator());
  }
  std::unique_ptr<Communicator> comm_;
};

TEST_F(NcclCommunicatorTest, IsOneRankOnTheGpu) {
  EXPECT_EQ(comm_->backend(), "nccl");
  EXPECT_EQ(comm_->device(), Device::CUDA);
  EXPECT_EQ(comm_->rank(), 0);
  EXPECT_EQ(comm_->size(), 1);
  comm_->barrier();
}

TEST_F(NcclCommunicatorTest, TensorCollectivesOnOneRankGiveTheInput) {
  std::mt19937 gen(11);
  const Tensor input = testing_util::random_normal({6, 5}, gen);
  Tensor t = input.copy_to(Device::CUDA);
  comm_->broadcast(t, 0);
  comm_->all_reduce_sum(t);
  expect_bitwise_equal_to_cpu(t, input, "broadcast and all_reduce_sum");
  const Tensor scattered = comm_->reduce_scatter_sum(input.copy_to(Device::CUDA));  // all-to-all + rank-order sum
  EXPECT_EQ(scattered.device(), Device::CUDA);
  expect_bitwise_equal_to_cpu(scattered, input, "reduce_scatter_sum f32");
  const Tensor ids = testing_util::random_ids<int64_t>({9}, int64_t{1} << 40, gen);
  expect_bitwise_equal_to_cpu(comm_->reduce_scatter_sum(ids.copy_to(Device::CUDA)), ids,
                              "reduce_scatter_sum i64 (ncclReduceScatter)");
  expect_bitwise_equal_to_cpu(comm_->all_gather(input.copy_to(Device::CUDA)), input, "all_gather f32");
  const testing_util::Bf16Values half = testing_util::round_to_bf16(input);
  expect_bitwise_equal_to_cpu(comm_->all_gather(half.bf16.copy_to(Device::CUDA)), half.bf16, "all_gather bf16");
  expect_bitwise_equal_to_cpu(comm_->all_to_all_v_rows(input.copy_to(Device::CUDA), {6}, {6}), input,
                              "all_to_all_v_rows");
  EXPECT_EQ(comm_->all_to_all_v_rows(Tensor::empty({0, 5}, DType::F32, Device::CUDA), {0}, {0}).shape(),
            (Shape{0, 5}));
  EXPECT_THROW(comm_->all_to_all_v_rows(input.copy_to(Device::CUDA), {6}, {5}), Error);
}

TEST_F(NcclCommunicatorTest, DevicePointersOfEveryType) {
  // f64 has no tensor dtype: 8-byte words of device memory through the typed-pointer API.
  const std::vector<double> values{0.1, -2.5, 1e300, 3.0};
  Tensor host = Tensor::empty({4}, DType::I64);
  std::memcpy(host.raw(), values.data(), sizeof(double) * values.size());
  const Tensor send = host.copy_to(Device::CUDA);
  Tensor recv = testing_util::poisoned_ids<int64_t>({4}).copy_to(Device::CUDA);
  comm_->reduce_scatter_sum(static_cast<const double*>(send.raw()), static_cast<double*>(recv.raw()), 4);
  expect_bitwise_equal_to_cpu(recv, host, "reduce_scatter_sum f64");
  recv = testing_util::poisoned_ids<int64_t>({4}).copy_to(Device::CUDA);
  comm_->all_gather(static_cast<const double*>(send.raw()), static_cast<double*>(recv.raw()), 4);
  expect_bitwise_equal_to_cpu(recv, host, "all_gather f64");
  Tensor ints = Tensor::from_vector(std::vector<int32_t>{7, -8, 9}, {3}).copy_to(Device::CUDA);
  comm_->all_reduce_sum(ints.data<int32_t>(), 3);
  comm_->broadcast(ints.data<int32_t>(), 3, 0);
  EXPECT_EQ(ints.to_vector<int32_t>(), (std::vector<int32_t>{7, -8, 9}));
  EXPECT_THROW(comm_->all_reduce_sum(static_cast<uint8_t*>(ints.raw()), 4), Error);
}

// A started all-to-all runs on the group's communication stream; compute-stream work queued after
// wait() (the copy to the host) sees its rows. The send tensor is dropped before the wait: the pending
// collective keeps it alive, and a block allocated meanwhile must not reuse its memory.
TEST_F(NcclCommunicatorTest, StartedCollectivesCompleteBeforeLaterComputeWork) {
  std::mt19937 gen(15);
  const Tensor input = testing_util::random_normal({512, 33}, gen);
  StartedRows started = comm_->start_all_to_all_v_rows(input.copy_to(Device::CUDA), {512}, {512});
  const Tensor other = Tensor::full({512, 33}, -1.0f).copy_to(Device::CUDA);  // may take a freed block
  EXPECT_EQ(started.rows.device(), Device::CUDA);
  started.done->wait();
  expect_bitwise_equal_to_cpu(started.rows, input, "start_all_to_all_v_rows");
  for (float v : other.to_vector<float>()) ASSERT_EQ(v, -1.0f);
  // One rank: the sum is the input (no collective runs), through the same API.
  Tensor t = input.copy_to(Device::CUDA);
  comm_->start_all_reduce_sum(t)->wait();
  expect_bitwise_equal_to_cpu(t, input, "start_all_reduce_sum");
  // Destroyed without wait(): it waits.
  {
    StartedRows dropped = comm_->start_all_to_all_v_rows(input.copy_to(Device::CUDA), {512}, {512});
    (void)dropped;
  }
  cuda_synchronize();
}

TEST_F(NcclCommunicatorTest, HostVectorsAndCpuTensorsTakeTheHostGroup) {
  std::vector<double> sums{1.5, -2.0};
  comm_->all_reduce_sum(sums);
  EXPECT_EQ(sums, (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(comm_->all_reduce_sum<int64_t>(41), 41);
  EXPECT_EQ(comm_->all_gather(std::vector<int64_t>{7, 8}), (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(comm_->all_to_all_v(std::vector<int32_t>{4, 5, 6}, {3}, {3}), (std::vector<int32_t>{4, 5, 6}));
  std::vector<uint8_t> bytes{1, 2, 3};
  comm_->broadcast(bytes, 0);
  EXPECT_EQ(bytes, (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_EQ(comm_->exchange_counts({4}), std::vector<int64_t>{4});

  std::mt19937 gen(12);
  const Tensor input = testing_util::random_normal({3, 4}, gen);
  const Tensor gathered = comm_->all_gather(input);
  EXPECT_EQ(gathered.device(), Device::CPU);
  EXPECT_TRUE(testing_util::bitwise_equal(gathered, input));
  const Tensor scattered = comm_->reduce_scatter_sum(input);
  EXPECT_EQ(scattered.device(), Device::CPU);
  EXPECT_TRUE(testing_util::bitwise_equal(scattered, input));
}

TEST_F(NcclCommunicatorTest, SplitGroupsAreNcclGroups) {
  std::vector<std::unique_ptr<Communicator>> groups;
  groups.push_back(comm_->split(3, 0));
  groups.push_back(comm_->split_node());
  for (const std::unique_ptr<Communicator>& group : groups) {
    EXPECT_EQ(group->backend(), "nccl");
    EXPECT_EQ(group->size(), 1);
    std::mt19937 gen(13);
    const Tensor input = testing_util::random_normal({2, 3}, gen);
    expect_bitwise_equal_to_cpu(group->all_gather(input.copy_to(Device::CUDA)), input, "all_gather in a split");
  }
}

TEST_F(NcclCommunicatorTest, DeviceCommunicatorOfOneProcessIsNccl) {
  std::unique_ptr<Communicator> world = make_local_communicator();
  std::unique_ptr<Communicator> run = make_device_communicator(*world, Device::CUDA);
  EXPECT_EQ(run->backend(), "nccl");
  EXPECT_EQ(cuda_context().device, 0);
  EXPECT_EQ(make_device_communicator(*world, Device::CPU)->backend(), "local");
}

// Blocks of values over many magnitudes, so that sums depend on the order of the additions.
template <class T>
std::vector<T> spread_values(int64_t count, std::mt19937& gen) {
  std::uniform_real_distribution<double> mantissa(-1.0, 1.0);
  std::uniform_int_distribution<int> exponent(-20, 20);
  std::vector<T> v(count);
  for (T& x : v) x = static_cast<T>(std::ldexp(mantissa(gen), exponent(gen)));
  return v;
}

template <class T>
void check_ordered_block_sum(CommType type) {
  std::mt19937 gen(14);
  for (int blocks : {1, 2, 3, 8}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{70001}}) {
      SCOPED_TRACE(std::to_string(blocks) + " blocks of " + std::to_string(n));
      const std::vector<T> in = spread_values<T>(blocks * n, gen);
      std::vector<T> left_to_right(n), right_to_left(n);
      for (int64_t i = 0; i < n; ++i) {
        left_to_right[i] = in[i];
        for (int b = 1; b < blocks; ++b) left_to_right[i] += in[b * n + i];
        right_to_left[i] = in[(blocks - 1) * n + i];
        for (int b = blocks - 2; b >= 0; --b) right_to_left[i] += in[b * n + i];
      }
      // Device buffers as 8-byte words (f64 has no tensor dtype); the output poisoned with 0xff bytes.
      Tensor in_host = Tensor::empty({(blocks * n * static_cast<int64_t>(sizeof(T)) + 7) / 8}, DType::I64);
      if (!in.empty()) std::memcpy(in_host.raw(), in.data(), in.size() * sizeof(T));
      const Tensor in_gpu = in_host.copy_to(Device::CUDA);
      const int64_t out_words = (n * static_cast<int64_t>(sizeof(T)) + 7) / 8;
      Tensor out_gpu = testing_util::poisoned_ids<int64_t>({out_words}).copy_to(Device::CUDA);
      ordered_block_sum(in_gpu.raw(), out_gpu.raw(), n, blocks, type, cuda_context().compute);
      const Tensor out_host = out_gpu.copy_to(Device::CPU);
      std::vector<T> out(n);
      if (n > 0) std::memcpy(out.data(), out_host.raw(), n * sizeof(T));
      EXPECT_EQ(std::memcmp(out.data(), left_to_right.data(), n * sizeof(T)), 0)
          << "differs from the host's left-to-right sum";
      if (blocks >= 3 && n >= 1000) {  // the inputs do tell the orders apart
        EXPECT_NE(std::memcmp(left_to_right.data(), right_to_left.data(), n * sizeof(T)), 0);
      }
    }
  }
}

using OrderedBlockSum = CudaTest;

TEST_F(OrderedBlockSum, AddsTheBlocksInRankOrder) {
  check_ordered_block_sum<float>(CommType::F32);
  check_ordered_block_sum<double>(CommType::F64);
}

}  // namespace
}  // namespace engram

#else
TEST(NcclCommunicator, NotBuilt) { GTEST_SKIP() << "this build has no NCCL (see the configure summary)"; }
#endif
