// CUDA gather and the deterministic row reductions against the CPU ones. Gathers copy, and the
// reductions add each row's contributions in ascending position order like the CPU (sorted
// segments, no atomics), so every result must equal the CPU's bit for bit, repeated ids included.
#include <gtest/gtest.h>

#include <random>

#include "kernels/embedding.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaEmbedding = CudaTest;

// Rows of 37 values are copied one value at a time, rows of 40 (and 40 bf16) 16 bytes at a time; the
// segment sums likewise take rows of 29 and 19 one value at a time, of 32 and 20 four at a time.
template <class Id>
void check_gather(std::mt19937& gen, int64_t c) {
  const HostDevice table = random_on_both({53, c}, gen);
  const HostDevice ids = on_both(random_ids<Id>({7, 11}, 53, gen));
  HostDevice out = nan_on_both({7, 11, c});
  kernels::embedding_gather(table.cpu, ids.cpu, out.cpu);
  kernels::embedding_gather(table.gpu, ids.gpu, out.gpu);
  expect_bitwise_equal_to_cpu(out.gpu, out.cpu, "gather");
}

TEST_F(CudaEmbedding, GatherMatchesTheCpuForBothIdTypes) {
  std::mt19937 gen(61);
  for (const int64_t c : {37, 40}) {
    check_gather<int32_t>(gen, c);
    check_gather<int64_t>(gen, c);
  }
}

// Gathered into bf16 (the MoE's expert operands): the CPU's rows rounded to nearest even, bit for bit.
TEST_F(CudaEmbedding, GatherIntoBf16RoundsTheCpuRows) {
  std::mt19937 gen(62);
  for (const int64_t c : {37, 40}) {
    const HostDevice table = random_on_both({53, c}, gen);
    const HostDevice ids = on_both(random_ids<int32_t>({29}, 53, gen));
    Tensor expected = nan_tensor({29, c});
    kernels::embedding_gather(table.cpu, ids.cpu, expected);
    Tensor out = Tensor::empty({29, c}, DType::BF16, Device::CUDA);
    kernels::embedding_gather(table.gpu, ids.gpu, out);
    EXPECT_TRUE(bitwise_equal(out.copy_to(Device::CPU), round_to_bf16(expected).bf16));
    Tensor wrong = Tensor::empty({29, c}, DType::I32, Device::CUDA);
    expect_error([&] { kernels::embedding_gather(table.gpu, ids.gpu, wrong); },
                 {"embedding_gather has dtype i32, expected f32"});
  }
}

// A bf16 table (the MoE's input, written in bf16 by its norm) gathered into bf16: its rows copied,
// the CPU's f32 rows rounded to nearest even, bit for bit. Into f32 it is refused.
TEST_F(CudaEmbedding, GatherFromABf16TableCopiesItsRows) {
  std::mt19937 gen(63);
  for (const int64_t c : {37, 40}) {
    const Tensor table = random_uniform({53, c}, gen);
    const Tensor ids = random_ids<int32_t>({29}, 53, gen);
    Tensor expected = nan_tensor({29, c});
    kernels::embedding_gather(table, ids, expected);
    const Tensor table_bf16 = round_to_bf16(table).bf16.copy_to(Device::CUDA), ids_gpu = ids.copy_to(Device::CUDA);
    Tensor out = Tensor::empty({29, c}, DType::BF16, Device::CUDA);
    kernels::embedding_gather(table_bf16, ids_gpu, out);
    EXPECT_TRUE(bitwise_equal(out.copy_to(Device::CPU), round_to_bf16(expected).bf16));
    Tensor f32_out = Tensor::empty({29, c}, DType::F32, Device::CUDA);
    EXPECT_THROW(kernels::embedding_gather(table_bf16, ids_gpu, f32_out), Error);
  }
}

TEST_F(CudaEmbedding, AnIdOutsideTheTableIsTheCpuError) {
  const Tensor table = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  const Tensor ids = Tensor::from_vector<int64_t>({0, 3, -1, 9}, {4}).copy_to(Device::CUDA);
  Tensor out = Tensor::empty({4, 3}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::embedding_gather(table, ids, out); },
               {"id -1 at position 2 is outside the table's 4 rows [0, 4)"});
  Tensor dtable = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::embedding_scatter_add(out, ids, dtable); }, {"id -1 at position 2"});
}

// f32 dout, and bf16 dout (the MoE's row gradients, as its expert products write them), which is
// added as the floats it holds: the CPU's sums of those values, bit for bit, into the f32 table.
TEST_F(CudaEmbedding, ScatterAddEqualsTheCpuBitForBit) {
  std::mt19937 gen(62);
  // Few rows, many ids: most rows receive many contributions, whose order matters in float.
  for (const DType dout_dtype : {DType::F32, DType::BF16}) {
    for (const int64_t c : {29, 32}) {
      const HostDevice ids = on_both(random_ids<int32_t>({3, 331}, 17, gen));
      const bool bf16 = dout_dtype == DType::BF16;
      Tensor dout_cpu = random_uniform({3, 331, c}, gen), dout_gpu = dout_cpu.copy_to(Device::CUDA);
      if (bf16) {  // the values bf16 holds, on both sides
        const Bf16Values rounded = round_to_bf16(dout_cpu);
        dout_cpu = rounded.f32;
        dout_gpu = rounded.bf16.copy_to(Device::CUDA);
      }
      HostDevice dtable = random_on_both({17, c}, gen);  // accumulated into
      kernels::embedding_scatter_add(dout_cpu, ids.cpu, dtable.cpu);
      kernels::embedding_scatter_add(dout_gpu, ids.gpu, dtable.gpu);
      expect_bitwise_equal_to_cpu(dtable.gpu, dtable.cpu, bf16 ? "scatter_add of bf16 rows" : "scatter_add");
    }
  }
}

TEST_F(CudaEmbedding, ReduceRowsEqualsTheCpuBitForBit) {
  std::mt19937 gen(63);
  for (const int64_t c : {19, 20}) {
    for (int64_t high : {int64_t{5}, int64_t{1} << 40}) {  // repeated ids; ids beyond 32 bits
      const HostDevice ids = on_both(random_ids<int64_t>({997}, high, gen));
      const HostDevice dout = random_on_both({997, c}, gen);
      const RowGrads cpu = kernels::reduce_rows(dout.cpu, ids.cpu);
      const RowGrads gpu = kernels::reduce_rows(dout.gpu, ids.gpu);
      EXPECT_EQ(gpu.rows.device(), Device::CUDA);
      expect_bitwise_equal_to_cpu(gpu.rows, cpu.rows, "reduce_rows rows");
      expect_bitwise_equal_to_cpu(gpu.values, cpu.values, "reduce_rows values");
    }
  }
  const Tensor negative = Tensor::from_vector<int32_t>({2, -3}, {2}).copy_to(Device::CUDA);
  expect_error([&] { kernels::reduce_rows(Tensor::zeros({2, 4}, DType::F32, Device::CUDA), negative); },
               {"row id -3 at position 1 is negative"});
}

}  // namespace
}  // namespace engram
