// CUDA AdamW and lazy row-sparse Adam against the CPU ones: both run adam_element (the GPU without
// fused multiply-adds); parameters and moments are compared to a few float ulps (rtol 1e-5, atol
// 1e-8); rows the sparse update does not list must stay bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "kernels/adam.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaAdam = CudaTest;

kernels::AdamStep test_step() {
  kernels::AdamStep s;
  s.lr = 3e-3f;
  s.weight_decay = 0.1f;
  s.step = 7;
  s.grad_scale = 0.8f;
  return s;
}

// 13 × 301 elements run one at a time, 13 × 300 four at a time.
TEST_F(CudaAdam, AdamwMatchesTheCpu) {
  std::mt19937 gen(81);
  for (const Shape& shape : {Shape{13, 301}, Shape{13, 300}}) {
    SCOPED_TRACE(shape_str(shape));
    HostDevice p = random_on_both(shape, gen), m = random_on_both(shape, gen, -0.1f, 0.1f);
    HostDevice v = random_on_both(shape, gen, 0.0f, 0.01f);
    const HostDevice g = random_on_both(shape, gen);
    for (int repeat = 0; repeat < 3; ++repeat) {
      kernels::adamw_update(p.cpu, g.cpu, m.cpu, v.cpu, test_step());
      kernels::adamw_update(p.gpu, g.gpu, m.gpu, v.gpu, test_step());
    }
    expect_close_to_cpu(p.gpu, p.cpu, 1e-5, 1e-8, "param");
    expect_close_to_cpu(m.gpu, m.cpu, 1e-5, 1e-8, "m");
    expect_close_to_cpu(v.gpu, v.cpu, 1e-5, 1e-8, "v");
  }
}

// Four elements at a time (16-byte aligned tensors) give the bits of one at a time (the same values
// one element off a 16-byte boundary).
TEST_F(CudaAdam, AdamwFourAtATimeEqualsOneAtATimeBitwise) {
  std::mt19937 gen(82);
  const int64_t n = 4096;
  const Tensor p0 = random_uniform({n}, gen), m0 = random_uniform({n}, gen, -0.1f, 0.1f);
  const Tensor v0 = random_uniform({n}, gen, 0.0f, 0.01f), g0 = random_uniform({n}, gen);
  std::vector<Tensor> aligned, offset;  // p, g, m, v on the device, starting at element 0 or 1
  for (const Tensor* t : {&p0, &g0, &m0, &v0}) {
    aligned.push_back(t->copy_to(Device::CUDA));
    Tensor padded = Tensor::zeros({n + 1}, DType::F32, Device::CUDA);
    Tensor view = padded.slice(1, n + 1);
    view.copy_from(aligned.back());
    offset.push_back(view);
  }
  kernels::adamw_update(aligned[0], aligned[1], aligned[2], aligned[3], test_step());
  kernels::adamw_update(offset[0], offset[1], offset[2], offset[3], test_step());
  for (int i : {0, 2, 3}) EXPECT_TRUE(device_bitwise_equal(aligned[i], offset[i])) << "tensor " << i;
}

TEST_F(CudaAdam, SparseAdamMatchesTheCpuAndLeavesOtherRowsAlone) {
  std::mt19937 gen(82);
  const int64_t n_rows = 41, c = 23;
  HostDevice table = random_on_both({n_rows, c}, gen), m = random_on_both({n_rows, c}, gen, -0.1f, 0.1f);
  HostDevice v = random_on_both({n_rows, c}, gen, 0.0f, 0.01f);
  const Tensor before = table.cpu.clone();
  const std::vector<int64_t> listed{0, 3, 4, 17, 40};
  const HostDevice rows = on_both(Tensor::from_vector(listed, {5}));
  const HostDevice grads = random_on_both({5, c}, gen);
  kernels::sparse_adam_update(table.cpu, rows.cpu, grads.cpu, m.cpu, v.cpu, test_step());
  kernels::sparse_adam_update(table.gpu, rows.gpu, grads.gpu, m.gpu, v.gpu, test_step());
  expect_close_to_cpu(table.gpu, table.cpu, 1e-5, 1e-8, "table");
  expect_close_to_cpu(m.gpu, m.cpu, 1e-5, 1e-8, "m");
  expect_close_to_cpu(v.gpu, v.cpu, 1e-5, 1e-8, "v");
  const Tensor after = table.gpu.copy_to(Device::CPU);
  for (int64_t r = 0; r < n_rows; ++r) {
    if (std::count(listed.begin(), listed.end(), r)) continue;
    EXPECT_TRUE(bitwise_equal(after.slice(r, r + 1).clone(), before.slice(r, r + 1).clone())) << "row " << r;
  }
}

TEST_F(CudaAdam, SparseRowsMustAscend) {
  const Tensor table = Tensor::zeros({8, 2}, DType::F32, Device::CUDA);
  Tensor t = table, m = table.clone(), v = table.clone();
  const Tensor rows = Tensor::from_vector<int64_t>({1, 5, 5}, {3}).copy_to(Device::CUDA);
  const Tensor grads = Tensor::zeros({3, 2}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::sparse_adam_update(t, rows, grads, m, v, test_step()); },
               {"sparse_adam_update: row 5 at 2"});
}

}  // namespace
}  // namespace engram
