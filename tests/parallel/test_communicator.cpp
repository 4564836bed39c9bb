// Every collective of the world communicator against its mathematical result, with rank-dependent
// inputs; run on 1, 2 and 4 ranks. Also the Local communicator, split groups and argument errors,
// and (with a CUDA device) the Tensor collectives on CUDA tensors, which the host communicator
// stages through host copies: the same bits as on CPU tensors, results on the device.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>

#include "tests/parallel/support/cuda_tensors.h"
#include "tests/parallel/support/mpi_test_env.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using testing_util::world;

// A value only rank r and position i produce, exact in float (small integers and halves).
double contribution(int r, int64_t i) { return 0.5 * ((r + 1) * 7 + i % 11) - 3.0 * (i % 3); }

TEST(Communicator, RankAndSizeAreConsistent) {
  Communicator& comm = world();
  ASSERT_GE(comm.size(), 1);
  ASSERT_GE(comm.rank(), 0);
  ASSERT_LT(comm.rank(), comm.size());
  const std::vector<int32_t> ranks = comm.all_gather(std::vector<int32_t>{comm.rank()});
  for (int r = 0; r < comm.size(); ++r) EXPECT_EQ(ranks[r], r);
  EXPECT_EQ(comm.device(), Device::CPU);
  comm.barrier();
}

TEST(Communicator, BroadcastFromEveryRoot) {
  Communicator& comm = world();
  for (int root = 0; root < comm.size(); ++root) {
    std::vector<double> values(13, -1.0);
    if (comm.rank() == root)
      for (int64_t i = 0; i < 13; ++i) values[i] = contribution(root, i);
    comm.broadcast(values, root);
    for (int64_t i = 0; i < 13; ++i)
      EXPECT_EQ(values[i], contribution(root, i)) << "root " << root << " i " << i;

    // Tensors: f32 and i64, and bf16 moved as bytes.
    Tensor f = comm.rank() == root ? Tensor::full({3, 7}, 1.5f + root) : testing_util::nan_tensor({3, 7});
    comm.broadcast(f, root);
    for (float v : f.to_vector<float>()) EXPECT_EQ(v, 1.5f + root);
    Tensor ids = Tensor::from_vector(
        std::vector<int64_t>(5, comm.rank() == root ? (int64_t{1} << 40) + root : -1), {5});
    comm.broadcast(ids, root);
    for (int64_t v : ids.to_vector<int64_t>()) EXPECT_EQ(v, (int64_t{1} << 40) + root);
    Tensor half = Tensor::empty({4, 3}, DType::BF16);
    auto* bytes = static_cast<uint8_t*>(half.raw());
    for (int64_t b = 0; b < 24; ++b)
      bytes[b] = comm.rank() == root ? static_cast<uint8_t>(b * 5 + root) : 0xFF;
    comm.broadcast(half, root);
    for (int64_t b = 0; b < 24; ++b) EXPECT_EQ(bytes[b], static_cast<uint8_t>(b * 5 + root)) << "byte " << b;
  }
}

TEST(Communicator, AllReduceSumOfEveryType) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  const int64_t n = 33;
  std::vector<float> f(n);
  std::vector<double> d(n);
  std::vector<int64_t> l(n);
  std::vector<int32_t> i32(n);
  for (int64_t i = 0; i < n; ++i) {
    f[i] = static_cast<float>(contribution(me, i));
    d[i] = contribution(me, i) / 3.0;
    l[i] = (int64_t{1} << 33) * (me + 1) - i;
    i32[i] = (me + 1) * 1000 - static_cast<int32_t>(i);
  }
  comm.all_reduce_sum(f);
  comm.all_reduce_sum(d);
  comm.all_reduce_sum(l);
  comm.all_reduce_sum(i32);
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0, sum_third = 0.0;
    int64_t sum_l = 0, sum_i = 0;
    for (int r = 0; r < p; ++r) {
      sum += contribution(r, i);
      sum_third += contribution(r, i) / 3.0;
      sum_l += (int64_t{1} << 33) * (r + 1) - i;
      sum_i += (r + 1) * 1000 - i;
    }
    EXPECT_EQ(f[i], static_cast<float>(sum)) << i;  // exact: small halves
    EXPECT_NEAR(d[i], sum_third, 1e-12 * (1.0 + std::fabs(sum_third))) << i;
    EXPECT_EQ(l[i], sum_l) << i;
    EXPECT_EQ(i32[i], sum_i) << i;
  }
  EXPECT_EQ(comm.all_reduce_sum(2.5), 2.5 * p);
  EXPECT_EQ(comm.all_reduce_sum<int64_t>(me), int64_t{p} * (p - 1) / 2);

  Tensor t = Tensor::full({5, 3}, static_cast<float>(me + 1));
  comm.all_reduce_sum(t);
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, p * (p + 1) / 2.0f);
}

TEST(Communicator, AllReduceIsBitwiseIdenticalOnEveryRankAndEveryCall) {
  Communicator& comm = world();
  std::mt19937 gen(1234 + comm.rank());
  const Tensor input = testing_util::random_normal({1001}, gen);
  std::vector<double> expected(input.numel(), 0.0);  // Σ over ranks, from every rank's draws
  for (int r = 0; r < comm.size(); ++r) {
    std::mt19937 g(1234 + r);
    const Tensor other = testing_util::random_normal({1001}, g);
    for (int64_t i = 0; i < other.numel(); ++i) expected[i] += other.data<float>()[i];
  }
  Tensor first = input.clone(), second = input.clone();
  comm.all_reduce_sum(first);
  comm.all_reduce_sum(second);
  EXPECT_TRUE(testing_util::bitwise_equal(first, second));
  testing_util::expect_close(first, expected, 1e-6, 1e-6, "all_reduce_sum of random floats");
  // Every rank's result, gathered: the same bits everywhere.
  const Tensor all = comm.all_gather(first.view({1, 1001}));
  for (int r = 0; r < comm.size(); ++r)
    EXPECT_EQ(std::memcmp(all.slice(r, r + 1).raw(), first.raw(), first.nbytes()), 0) << "rank " << r;
}

TEST(Communicator, ReduceScatterSumGivesEachRankItsBlock) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  const int64_t block = 7;
  std::vector<double> send(p * block);
  for (int64_t i = 0; i < p * block; ++i) send[i] = contribution(me, i);
  std::vector<double> recv(block, std::nan(""));
  comm.reduce_scatter_sum(send.data(), recv.data(), block);
  for (int64_t j = 0; j < block; ++j) {
    double sum = 0.0;
    for (int r = 0; r < p; ++r) sum += contribution(r, me * block + j);
    EXPECT_EQ(recv[j], sum) << j;
  }
  // Tensor form: [p·3, 5] -> [3, 5].
  Tensor t = Tensor::empty({p * 3, 5});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(contribution(me, i));
  const Tensor out = comm.reduce_scatter_sum(t);
  ASSERT_EQ(out.shape(), (Shape{3, 5}));
  for (int64_t j = 0; j < out.numel(); ++j) {
    double sum = 0.0;
    for (int r = 0; r < p; ++r) sum += contribution(r, me * 15 + j);
    EXPECT_EQ(out.data<float>()[j], static_cast<float>(sum)) << j;
  }
  if (p > 1) {
    EXPECT_THROW(comm.reduce_scatter_sum(Tensor::zeros({p + 1, 2})), Error);
  }
}

TEST(Communicator, AllGatherOrdersBySourceRank) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  std::vector<int64_t> mine(3);
  for (int64_t i = 0; i < 3; ++i) mine[i] = me * 100 + i;
  const std::vector<int64_t> all = comm.all_gather(mine);
  ASSERT_EQ(static_cast<int>(all.size()), 3 * p);
  for (int r = 0; r < p; ++r)
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(all[r * 3 + i], r * 100 + i);

  Tensor t = Tensor::empty({2, 3});
  for (int64_t i = 0; i < 6; ++i) t.data<float>()[i] = static_cast<float>(me * 10 + i);
  const Tensor gathered = comm.all_gather(t);
  ASSERT_EQ(gathered.shape(), (Shape{2 * p, 3}));
  for (int r = 0; r < p; ++r)
    for (int64_t i = 0; i < 6; ++i)
      EXPECT_EQ(gathered.data<float>()[r * 6 + i], static_cast<float>(r * 10 + i));
}

// Elements rank s sends to rank d: zero for some pairs (s + 2d ≡ 2 mod 3 sends nothing).
int64_t pair_count(int s, int d) { return (s + 2 * d) % 3; }
int64_t pair_value(int s, int d, int64_t i) { return 1000 * s + 100 * d + i; }

TEST(Communicator, AllToAllVWithZeroCountsOrdersBySource) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  std::vector<int64_t> send_counts(p), send;
  for (int d = 0; d < p; ++d) {
    send_counts[d] = pair_count(me, d);
    for (int64_t i = 0; i < send_counts[d]; ++i) send.push_back(pair_value(me, d, i));
  }
  const std::vector<int64_t> recv_counts = comm.exchange_counts(send_counts);
  for (int s = 0; s < p; ++s) EXPECT_EQ(recv_counts[s], pair_count(s, me)) << "from " << s;
  const std::vector<int64_t> recv = comm.all_to_all_v(send, send_counts, recv_counts);
  std::vector<int64_t> expected;
  for (int s = 0; s < p; ++s)
    for (int64_t i = 0; i < pair_count(s, me); ++i) expected.push_back(pair_value(s, me, i));
  EXPECT_EQ(recv, expected);

  // Rows of a [n, 3] f32 tensor.
  Tensor rows = Tensor::empty({Communicator::total(send_counts), 3});
  for (int64_t r = 0; r < rows.dim(0); ++r)
    for (int64_t c = 0; c < 3; ++c) rows.data<float>()[r * 3 + c] = static_cast<float>(send[r] * 4 + c);
  const Tensor got = comm.all_to_all_v_rows(rows, send_counts, recv_counts);
  ASSERT_EQ(got.shape(), (Shape{static_cast<int64_t>(expected.size()), 3}));
  for (size_t r = 0; r < expected.size(); ++r)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(got.data<float>()[r * 3 + c], static_cast<float>(expected[r] * 4 + c));

  // Nothing to anyone.
  const std::vector<int64_t> zeros(p, 0);
  EXPECT_EQ(comm.exchange_counts(zeros), zeros);
  EXPECT_EQ(comm.all_to_all_v_rows(Tensor::empty({0, 3}), zeros, zeros).shape(), (Shape{0, 3}));
}

// Started collectives give the blocking ones' bits: a sum of random floats (whose bits depend on the
// adding order) and rows to every rank with some pairs sending nothing; buffers the caller drops
// before wait() stay alive in the pending collective.
TEST(Communicator, StartedCollectivesGiveTheBlockingResults) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  std::mt19937 gen(77 + me);
  const Tensor input = testing_util::random_normal({1001}, gen);
  Tensor blocking = input.clone(), started = input.clone();
  comm.all_reduce_sum(blocking);
  std::unique_ptr<PendingCollective> sum = comm.start_all_reduce_sum(started);
  sum->wait();
  EXPECT_TRUE(testing_util::bitwise_equal(started, blocking));

  std::vector<int64_t> send_rows(p);
  for (int d = 0; d < p; ++d) send_rows[d] = pair_count(me, d);
  const std::vector<int64_t> recv_rows = comm.exchange_counts(send_rows);
  const Tensor rows = testing_util::random_normal({Communicator::total(send_rows), 3}, gen);
  const Tensor expected = comm.all_to_all_v_rows(rows, send_rows, recv_rows);
  StartedRows got = comm.start_all_to_all_v_rows(rows.clone(), send_rows, recv_rows);  // the clone dies here
  got.done->wait();
  EXPECT_TRUE(testing_util::bitwise_equal(got.rows, expected));

  // Several in flight, waited for in another order than started.
  Tensor a = input.clone(), b = Tensor::full({4}, static_cast<float>(me + 1));
  std::unique_ptr<PendingCollective> first = comm.start_all_reduce_sum(a);
  std::unique_ptr<PendingCollective> second = comm.start_all_reduce_sum(b);
  second->wait();
  first->wait();
  EXPECT_TRUE(testing_util::bitwise_equal(a, blocking));
  for (float v : b.to_vector<float>()) EXPECT_EQ(v, p * (p + 1) / 2.0f);
  Tensor half = Tensor::empty({2}, DType::BF16);  // bf16 cannot be summed: an error before any message
  EXPECT_THROW(comm.start_all_reduce_sum(half), Error);
}

TEST(Communicator, SplitMakesGroupsOrderedByKey) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  // Parity groups, ranks in descending world order (key = −rank).
  std::unique_ptr<Communicator> parity = comm.split(me % 2, -me);
  std::vector<int> members;
  for (int r = p - 1; r >= 0; --r)
    if (r % 2 == me % 2) members.push_back(r);
  ASSERT_EQ(parity->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[parity->rank()], me);
  const std::vector<int32_t> gathered = parity->all_gather(std::vector<int32_t>{me});
  EXPECT_EQ(std::vector<int>(gathered.begin(), gathered.end()), members);
  int64_t expected_sum = 0;
  for (int r : members) expected_sum += r;
  EXPECT_EQ(parity->all_reduce_sum<int64_t>(me), expected_sum);
  // A group of one per rank, split from the sub-group.
  std::unique_ptr<Communicator> alone = parity->split(parity->rank(), 0);
  EXPECT_EQ(alone->size(), 1);
  EXPECT_EQ(alone->all_reduce_sum<int64_t>(me), me);
  EXPECT_THROW(comm.split(-1, 0), Error);
}

TEST(Communicator, SplitNodeHoldsTheRanksOnThisMachine) {
  Communicator& comm = world();
  // mpirun starts every rank of these tests on this machine.
  std::unique_ptr<Communicator> node = comm.split_node();
  EXPECT_EQ(node->size(), comm.size());
  EXPECT_EQ(node->rank(), comm.rank());
  EXPECT_EQ(node->all_reduce_sum<int64_t>(comm.rank()), int64_t{comm.size()} * (comm.size() - 1) / 2);
}

TEST(Communicator, DeviceCommunicatorForCpuRunsIsACopyOfTheWorld) {
  Communicator& comm = world();
  std::unique_ptr<Communicator> copy = make_device_communicator(comm, Device::CPU);
  EXPECT_EQ(copy->backend(), comm.backend());
  EXPECT_EQ(copy->device(), Device::CPU);
  EXPECT_EQ(copy->size(), comm.size());
  EXPECT_EQ(copy->rank(), comm.rank());
  EXPECT_EQ(copy->all_reduce_sum<int64_t>(1), comm.size());
}

TEST(Communicator, BadArgumentsAreErrorsBeforeAnyMessage) {
  Communicator& comm = world();
  std::vector<uint8_t> bytes(4, 1);
  EXPECT_THROW(comm.all_reduce_sum(bytes), Error);
  std::vector<double> values(2);
  EXPECT_THROW(comm.broadcast(values, comm.size()), Error);
  EXPECT_THROW(comm.exchange_counts(std::vector<int64_t>(comm.size() + 1, 0)), Error);
  EXPECT_THROW(comm.all_to_all_v_rows(Tensor::empty({2, 3}), std::vector<int64_t>(comm.size(), 0),
                                      std::vector<int64_t>(comm.size(), 0)),
               Error);
}

using CommunicatorOnCudaTensors = testing_util::CudaTensorTest;

// Runs `collective` on a CPU tensor and on its CUDA copy: the CUDA result stays on the device and has
// the CPU result's bits.
void expect_same_on_cuda(const Tensor& input, const std::function<Tensor(Tensor)>& collective,
                         const std::string& what) {
  const Tensor cpu = collective(input.clone());
  const Tensor gpu = collective(input.copy_to(Device::CUDA));
  testing_util::expect_cuda_with_cpu_bits(gpu, cpu, what);
}

TEST_F(CommunicatorOnCudaTensors, TensorCollectivesGiveTheCpuBits) {
  Communicator& comm = world();
  const int p = comm.size(), me = comm.rank();
  std::mt19937 gen(900 + me);
  for (int root = 0; root < p; ++root) {
    expect_same_on_cuda(
        testing_util::random_normal({5, 3}, gen),
        [&](Tensor t) {
          comm.broadcast(t, root);
          return t;
        },
        "broadcast from " + std::to_string(root));
  }
  const auto all_reduce = [&](Tensor t) {
    comm.all_reduce_sum(t);
    return t;
  };
  expect_same_on_cuda(testing_util::random_normal({1001}, gen), all_reduce, "all_reduce_sum f32");
  expect_same_on_cuda(testing_util::random_ids<int64_t>({7, 2}, int64_t{1} << 40, gen), all_reduce,
                      "all_reduce_sum i64");
  expect_same_on_cuda(testing_util::random_normal({p * 3, 5}, gen),
                      [&](Tensor t) { return comm.reduce_scatter_sum(t); }, "reduce_scatter_sum");
  expect_same_on_cuda(testing_util::random_normal({2, 3}, gen), [&](Tensor t) { return comm.all_gather(t); },
                      "all_gather f32");
  // bf16 rows travel as bytes.
  Tensor half = Tensor::empty({4, 3}, DType::BF16);
  for (int64_t b = 0; b < 24; ++b) static_cast<uint8_t*>(half.raw())[b] = static_cast<uint8_t>(b * 7 + me);
  expect_same_on_cuda(half, [&](Tensor t) { return comm.all_gather(t); }, "all_gather bf16");

  std::vector<int64_t> send_rows(p);
  for (int d = 0; d < p; ++d) send_rows[d] = pair_count(me, d);
  const std::vector<int64_t> recv_rows = comm.exchange_counts(send_rows);
  expect_same_on_cuda(testing_util::random_normal({Communicator::total(send_rows), 3}, gen),
                      [&](Tensor t) { return comm.all_to_all_v_rows(t, send_rows, recv_rows); },
                      "all_to_all_v_rows");
  const std::vector<int64_t> zeros(p, 0);
  expect_same_on_cuda(Tensor::empty({0, 3}), [&](Tensor t) { return comm.all_to_all_v_rows(t, zeros, zeros); },
                      "all_to_all_v_rows of nothing");
  // Started collectives on CUDA tensors (staged through the host on this communicator).
  expect_same_on_cuda(
      testing_util::random_normal({1001}, gen),
      [&](Tensor t) {
        comm.start_all_reduce_sum(t)->wait();
        return t;
      },
      "start_all_reduce_sum f32");
  expect_same_on_cuda(
      testing_util::random_normal({Communicator::total(send_rows), 3}, gen),
      [&](Tensor t) {
        StartedRows started = comm.start_all_to_all_v_rows(t, send_rows, recv_rows);
        started.done->wait();
        return started.rows;
      },
      "start_all_to_all_v_rows");
}

#ifdef ENGRAM_HAVE_CUDA
TEST_F(CommunicatorOnCudaTensors, DeviceCommunicatorOnOneGpu) {
  Communicator& comm = world();
  if (cuda_device_count() != 1) GTEST_SKIP() << "checks the one-GPU machine's choice";
  std::unique_ptr<Communicator> run = make_device_communicator(comm, Device::CUDA);
  // One rank owns the GPU (NCCL when built with it); several share it (host staging).
  const bool nccl = comm.size() == 1 && built_with_nccl();
  EXPECT_EQ(run->backend(), nccl ? "nccl" : comm.backend());
  EXPECT_EQ(run->device(), nccl ? Device::CUDA : Device::CPU);
  EXPECT_EQ(run->rank(), comm.rank());
  Tensor t = Tensor::full({3, 2}, 1.5f + comm.rank()).copy_to(Device::CUDA);
  run->all_reduce_sum(t);
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 1.5f * comm.size() + comm.size() * (comm.size() - 1) / 2.0f);
  EXPECT_EQ(run->all_reduce_sum<int64_t>(2), 2 * comm.size());
}
#endif

// The NCCL-or-staging choice compares GPUs by bus id: ranks that each see one GPU as device 0 (per-rank
// CUDA_VISIBLE_DEVICES, Slurm's per-task binding) still have GPUs of their own.
TEST(DeviceCommunicator, RanksShareAGpuOnlyWhenTwoHaveTheSameBusId) {
  EXPECT_FALSE(ranks_share_a_gpu({}));
  EXPECT_FALSE(ranks_share_a_gpu({"0000:1B:00.0"}));
  EXPECT_FALSE(ranks_share_a_gpu({"0000:1B:00.0", "0000:43:00.0", "0000:52:00.0", "0000:61:00.0"}));
  EXPECT_TRUE(ranks_share_a_gpu({"0000:1B:00.0", "0000:43:00.0", "0000:1B:00.0"}));
  EXPECT_TRUE(ranks_share_a_gpu({"0000:43:00.0", "0000:43:00.0"}));
}

TEST(LocalCommunicator, IsAGroupOfOne) {
  std::unique_ptr<Communicator> local = make_local_communicator();
  EXPECT_EQ(local->backend(), "local");
  EXPECT_EQ(local->rank(), 0);
  EXPECT_EQ(local->size(), 1);
  std::vector<float> v{1.5f, -2.0f};
  local->all_reduce_sum(v);
  EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(local->all_gather(std::vector<int64_t>{7, 8}), (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(local->exchange_counts({3}), std::vector<int64_t>{3});
  EXPECT_EQ(local->all_to_all_v(std::vector<int32_t>{4, 5, 6}, {3}, {3}), (std::vector<int32_t>{4, 5, 6}));
  const Tensor rs = local->reduce_scatter_sum(Tensor::full({2, 2}, 3.0f));
  EXPECT_EQ(rs.to_vector<float>(), std::vector<float>(4, 3.0f));
  EXPECT_EQ(local->split(5, 0)->size(), 1);
}

}  // namespace
}  // namespace engram
