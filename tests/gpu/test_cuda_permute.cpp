// CUDA expert permutation against the CPU's: sort_by_expert (N = 0 and 1, empty experts, E not a
// power of two and above 256) must give the same sorted tokens, positions and offsets; the combine
// (also onto what y holds, and with unit weights) and d_expert_out are the CPU's expression in the CPU's order, so they
// must equal it bit for bit; d_topk_w is a double dot product summed in another order, rounded to float: rtol 1e-6 with
// atol 1e-9. Also the CPU's errors for an expert or a position outside its range (the combines' deferred to the next
// wait, nothing written; more deferred checks between two waits than the device has slots), and two runs that must
// agree bit for bit. Float outputs start NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/deferred_errors.h"
#include "kernels/permute.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaPermute = CudaTest;

// Each token picks k distinct experts among the first `used` of the experts (the rest stay empty).
Tensor random_topk(int64_t n, int k, int used, std::mt19937& gen) {
  std::vector<int32_t> idx, experts(used);
  for (int64_t t = 0; t < n; ++t) {
    for (int e = 0; e < used; ++e) experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), gen);
    idx.insert(idx.end(), experts.begin(), experts.begin() + k);
  }
  return Tensor::from_vector(idx, {n, k});
}

struct Shape4 {
  int64_t n;
  int k, e, used;  // experts, of which the first `used` receive assignments
};
const Shape4 kShapes[] = {{1, 1, 1, 1},    {13, 3, 7, 5},       {33, 2, 13, 13},
                          {517, 6, 96, 96}, {1000, 8, 256, 200}, {77, 4, 300, 9}};

std::string label(const Shape4& s) {
  return "N " + std::to_string(s.n) + ", K " + std::to_string(s.k) + ", E " + std::to_string(s.e);
}

void expect_same_sort(const kernels::ExpertSort& gpu, const kernels::ExpertSort& cpu, const std::string& what) {
  expect_bitwise_equal_to_cpu(gpu.sorted_token, cpu.sorted_token, "sorted_token, " + what);
  expect_bitwise_equal_to_cpu(gpu.position, cpu.position, "position, " + what);
  EXPECT_EQ(gpu.offsets, cpu.offsets) << "offsets, " << what;
}

TEST_F(CudaPermute, SortByExpertEqualsTheCpus) {
  std::mt19937 gen(71);
  for (const Shape4& s : kShapes) {
    const HostDevice topk = on_both(random_topk(s.n, s.k, s.used, gen));
    expect_same_sort(kernels::sort_by_expert(topk.gpu, s.e), kernels::sort_by_expert(topk.cpu, s.e), label(s));
  }
  // Every assignment on one expert (one long stable run), and no tokens at all.
  const HostDevice same = on_both(Tensor::from_vector<int32_t>(std::vector<int32_t>(60, 4), {20, 3}));
  expect_same_sort(kernels::sort_by_expert(same.gpu, 9), kernels::sort_by_expert(same.cpu, 9), "one expert");
  const HostDevice none = on_both(Tensor::empty({0, 4}, DType::I32));
  expect_same_sort(kernels::sort_by_expert(none.gpu, 5), kernels::sort_by_expert(none.cpu, 5), "no tokens");
}

TEST_F(CudaPermute, SortByExpertReportsTheCpusError) {
  // The first bad assignment in flat order is the one named.
  const Tensor too_large = Tensor::from_vector<int32_t>({0, 1, 4, 2, 7, -1}, {3, 2}).copy_to(Device::CUDA);
  expect_error([&] { kernels::sort_by_expert(too_large, 4); },
               {"sort_by_expert: assignment 2 names expert 4, outside [0, 4)"});
  const Tensor negative = Tensor::from_vector<int32_t>({0, -1}, {1, 2}).copy_to(Device::CUDA);
  expect_error([&] { kernels::sort_by_expert(negative, 4); },
               {"sort_by_expert: assignment 1 names expert -1, outside [0, 4)"});
}

TEST_F(CudaPermute, CombineAndItsBackwardMatchTheCpu) {
  std::mt19937 gen(72);
  for (const Shape4& s : kShapes) {
    const int64_t n = s.n, k = s.k;
    const HostDevice position = on_both(kernels::sort_by_expert(random_topk(n, s.k, s.used, gen), s.e).position);
    // 1032 columns are read 4 at a time, the others one at a time.
    for (int64_t d : {int64_t{1}, int64_t{7}, int64_t{33}, int64_t{1031}, int64_t{1032}}) {
      const std::string what = label(s) + ", D " + std::to_string(d);
      const HostDevice expert_out = random_on_both({n * k, d}, gen);
      const HostDevice topk_w = random_on_both({n, k}, gen, 0.0f, 1.0f);
      HostDevice y = nan_on_both({n, d});
      kernels::combine_expert_outputs(expert_out.cpu, position.cpu, topk_w.cpu, y.cpu);
      kernels::combine_expert_outputs(expert_out.gpu, position.gpu, topk_w.gpu, y.gpu);
      expect_bitwise_equal_to_cpu(y.gpu, y.cpu, "y, " + what);
      HostDevice onto = random_on_both({n, d}, gen);  // accumulating: added onto what y holds
      kernels::combine_expert_outputs(expert_out.cpu, position.cpu, topk_w.cpu, onto.cpu, /*accumulate=*/true);
      kernels::combine_expert_outputs(expert_out.gpu, position.gpu, topk_w.gpu, onto.gpu, /*accumulate=*/true);
      expect_bitwise_equal_to_cpu(onto.gpu, onto.cpu, "y accumulated, " + what);
      HostDevice sums = nan_on_both({n, d});  // unit weights: each token's rows summed
      kernels::combine_expert_outputs(expert_out.cpu, position.cpu, Tensor(), sums.cpu);
      kernels::combine_expert_outputs(expert_out.gpu, position.gpu, Tensor(), sums.gpu);
      expect_bitwise_equal_to_cpu(sums.gpu, sums.cpu, "y without weights, " + what);

      const HostDevice dy = random_on_both({n, d}, gen);
      HostDevice d_expert_out = nan_on_both({n * k, d}), d_topk_w = nan_on_both({n, k});
      kernels::combine_expert_outputs_backward(dy.cpu, expert_out.cpu, position.cpu, topk_w.cpu, d_expert_out.cpu,
                                               d_topk_w.cpu);
      kernels::combine_expert_outputs_backward(dy.gpu, expert_out.gpu, position.gpu, topk_w.gpu, d_expert_out.gpu,
                                               d_topk_w.gpu);
      expect_bitwise_equal_to_cpu(d_expert_out.gpu, d_expert_out.cpu, "d_expert_out, " + what);
      expect_close_to_cpu(d_topk_w.gpu, d_topk_w.cpu, 1e-6, 1e-9, "d_topk_w, " + what);

      // bf16 d_expert_out (what the expert products take): the CPU's f32 values rounded to nearest even.
      Tensor bf16_d_expert_out = Tensor::empty({n * k, d}, DType::BF16, Device::CUDA);
      Tensor bf16_d_topk_w = nan_tensor({n, k}).copy_to(Device::CUDA);
      kernels::combine_expert_outputs_backward(dy.gpu, expert_out.gpu, position.gpu, topk_w.gpu, bf16_d_expert_out,
                                               bf16_d_topk_w);
      EXPECT_TRUE(bitwise_equal(bf16_d_expert_out.copy_to(Device::CPU), round_to_bf16(d_expert_out.cpu).bf16))
          << "bf16 d_expert_out, " << what;
      EXPECT_TRUE(device_bitwise_equal(bf16_d_topk_w, d_topk_w.gpu)) << "d_topk_w beside bf16 d_expert_out, " << what;
    }
  }
}

// bf16 expert_out (as the expert products write it) is read as the floats it holds: y and
// d_expert_out (f32, or bf16 rounded) equal the CPU's on those values bit for bit, and d_topk_w is
// bitwise the device's on them stored as f32 (the CPU's within the tolerance above).
TEST_F(CudaPermute, CombinesOfBf16ExpertOutputsEqualTheCpusOnTheirValues) {
  std::mt19937 gen(74);
  for (const Shape4& s : kShapes) {
    const int64_t n = s.n, k = s.k;
    const HostDevice position = on_both(kernels::sort_by_expert(random_topk(n, s.k, s.used, gen), s.e).position);
    // 1032 columns are read 4 at a time, 7 and 1031 one at a time.
    for (int64_t d : {int64_t{7}, int64_t{1031}, int64_t{1032}}) {
      const std::string what = label(s) + ", D " + std::to_string(d);
      const Bf16Values expert_out = round_to_bf16(random_uniform({n * k, d}, gen));
      const Tensor expert_out_f32 = expert_out.f32.copy_to(Device::CUDA);
      const Tensor expert_out_bf16 = expert_out.bf16.copy_to(Device::CUDA);
      const HostDevice topk_w = random_on_both({n, k}, gen, 0.0f, 1.0f);
      HostDevice y = nan_on_both({n, d});
      kernels::combine_expert_outputs(expert_out.f32, position.cpu, topk_w.cpu, y.cpu);
      kernels::combine_expert_outputs(expert_out_bf16, position.gpu, topk_w.gpu, y.gpu);
      expect_bitwise_equal_to_cpu(y.gpu, y.cpu, "y, " + what);

      const HostDevice dy = random_on_both({n, d}, gen);
      Tensor d_expert_out = nan_tensor({n * k, d}), d_topk_w = nan_tensor({n, k});
      kernels::combine_expert_outputs_backward(dy.cpu, expert_out.f32, position.cpu, topk_w.cpu, d_expert_out,
                                               d_topk_w);
      Tensor f32_inputs_d_expert_out = nan_tensor({n * k, d}).copy_to(Device::CUDA);
      Tensor f32_inputs_d_topk_w = nan_tensor({n, k}).copy_to(Device::CUDA);
      kernels::combine_expert_outputs_backward(dy.gpu, expert_out_f32, position.gpu, topk_w.gpu,
                                               f32_inputs_d_expert_out, f32_inputs_d_topk_w);
      for (const DType out_dtype : {DType::F32, DType::BF16}) {
        const std::string out_what = what + (out_dtype == DType::BF16 ? ", bf16" : ", f32") + " d_expert_out";
        const Tensor nan = nan_tensor({n * k, d});
        Tensor gpu_d_expert_out = (out_dtype == DType::BF16 ? round_to_bf16(nan).bf16 : nan).copy_to(Device::CUDA);
        Tensor gpu_d_topk_w = nan_tensor({n, k}).copy_to(Device::CUDA);
        kernels::combine_expert_outputs_backward(dy.gpu, expert_out_bf16, position.gpu, topk_w.gpu, gpu_d_expert_out,
                                                 gpu_d_topk_w);
        expect_bitwise_equal_to_cpu(gpu_d_expert_out,
                                    out_dtype == DType::BF16 ? round_to_bf16(d_expert_out).bf16 : d_expert_out,
                                    "d_expert_out, " + out_what);
        expect_close_to_cpu(gpu_d_topk_w, d_topk_w, 1e-6, 1e-9, "d_topk_w, " + out_what);
        EXPECT_TRUE(device_bitwise_equal(gpu_d_topk_w, f32_inputs_d_topk_w)) << "d_topk_w, " << out_what;
      }
    }
  }
  // dy stays f32.
  const Tensor expert_out = Tensor::zeros({4, 3}, DType::BF16, Device::CUDA);
  const Tensor position = Tensor::from_vector<int32_t>({0, 3, 1, 2}, {4}).copy_to(Device::CUDA);
  const Tensor topk_w = Tensor::full({2, 2}, 1.0f).copy_to(Device::CUDA);
  Tensor d_expert_out = Tensor::empty({4, 3}, DType::F32, Device::CUDA), d_topk_w = topk_w.clone();
  EXPECT_THROW(kernels::combine_expert_outputs_backward(Tensor::zeros({2, 3}, DType::BF16, Device::CUDA), expert_out,
                                                        position, topk_w, d_expert_out, d_topk_w),
               Error);
}

TEST_F(CudaPermute, APositionOutsideTheAssignmentsIsTheCpusErrorAtTheNextWait) {
  const Tensor expert_out = Tensor::full({4, 3}, 1.0f).copy_to(Device::CUDA);
  const Tensor bad = Tensor::from_vector<int32_t>({0, 9, 1, 4}, {4}).copy_to(Device::CUDA);
  const Tensor topk_w = Tensor::full({2, 2}, 1.0f).copy_to(Device::CUDA);
  Tensor y = Tensor::zeros({2, 3}, DType::F32, Device::CUDA);
  // The combines do not wait: the first bad position is named at the next wait (explicit here).
  kernels::combine_expert_outputs(expert_out, bad, topk_w, y);
  expect_error([] { kernels::cuda::check_deferred_errors(); }, {"combine_expert_outputs: position 9 outside [0, 4)"});
  Tensor d_expert_out = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  Tensor d_topk_w = Tensor::zeros({2, 2}, DType::F32, Device::CUDA);
  kernels::combine_expert_outputs_backward(y, expert_out, bad, topk_w, d_expert_out, d_topk_w);
  // sort_by_expert waits for its offsets: it raises the error deferred before it.
  const Tensor topk = Tensor::from_vector<int32_t>({0, 1, 1, 0}, {2, 2}).copy_to(Device::CUDA);
  expect_error([&] { kernels::sort_by_expert(topk, 2); },
               {"combine_expert_outputs_backward: position 9 outside [0, 4)"});
  kernels::cuda::check_deferred_errors();  // raised once only
  EXPECT_TRUE(bitwise_equal(y.copy_to(Device::CPU), Tensor::zeros({2, 3}))) << "y written on a bad position";
  EXPECT_TRUE(bitwise_equal(d_expert_out.copy_to(Device::CPU), Tensor::zeros({4, 3}))) << "d_expert_out written";
  EXPECT_TRUE(bitwise_equal(d_topk_w.copy_to(Device::CPU), Tensor::zeros({2, 2}))) << "d_topk_w written";
  // Valid positions afterwards write (the checks were reset): y = w·1 + w·1 = 2.
  const Tensor valid = Tensor::from_vector<int32_t>({0, 3, 1, 2}, {4}).copy_to(Device::CUDA);
  kernels::combine_expert_outputs(expert_out, valid, topk_w, y);
  kernels::cuda::check_deferred_errors();
  EXPECT_TRUE(bitwise_equal(y.copy_to(Device::CPU), Tensor::full({2, 3}, 2.0f))) << "y after valid positions";
}

// More deferred checks between two waits than there are device slots: a new check waits to free
// them, which raises the bad one among them; the slots are reused correctly (no false reports).
TEST_F(CudaPermute, ManyDeferredChecksBetweenWaits) {
  const Tensor expert_out = Tensor::full({4, 3}, 1.0f).copy_to(Device::CUDA);
  const Tensor topk_w = Tensor::full({2, 2}, 1.0f).copy_to(Device::CUDA);
  const Tensor valid = Tensor::from_vector<int32_t>({0, 3, 1, 2}, {4}).copy_to(Device::CUDA);
  const Tensor bad = Tensor::from_vector<int32_t>({0, 1, -2, 2}, {4}).copy_to(Device::CUDA);
  Tensor y = Tensor::zeros({2, 3}, DType::F32, Device::CUDA);
  for (int i = 0; i < 500; ++i) kernels::combine_expert_outputs(expert_out, valid, topk_w, y);
  kernels::cuda::check_deferred_errors();
  // No wait of its own in 500 calls, yet the bad one is raised (by the call that frees its slot).
  expect_error(
      [&] {
        for (int i = 0; i < 500; ++i) kernels::combine_expert_outputs(expert_out, i == 100 ? bad : valid, topk_w, y);
      },
      {"combine_expert_outputs: position -2 outside [0, 4)"});
  for (int i = 0; i < 500; ++i) kernels::combine_expert_outputs(expert_out, valid, topk_w, y);
  kernels::cuda::check_deferred_errors();
  EXPECT_TRUE(bitwise_equal(y.copy_to(Device::CPU), Tensor::full({2, 3}, 2.0f)));
}

// The sort, the combine and its backward twice on the same inputs: the same bits.
TEST_F(CudaPermute, RunsRepeatBitwise) {
  std::mt19937 gen(73);
  const int64_t n = 3001, k = 8, d = 257;
  const int e = 64;
  const Tensor topk = random_topk(n, k, e, gen).copy_to(Device::CUDA);
  const Tensor expert_out = random_uniform({n * k, d}, gen).copy_to(Device::CUDA);
  const Tensor topk_w = random_uniform({n, k}, gen).copy_to(Device::CUDA);
  const Tensor dy = random_uniform({n, d}, gen).copy_to(Device::CUDA);
  struct Run {
    kernels::ExpertSort sort;
    Tensor y, d_expert_out, d_topk_w;
  };
  auto run = [&] {
    Run r{kernels::sort_by_expert(topk, e), Tensor::empty({n, d}, DType::F32, Device::CUDA),
          Tensor::empty({n * k, d}, DType::F32, Device::CUDA), Tensor::empty({n, k}, DType::F32, Device::CUDA)};
    kernels::combine_expert_outputs(expert_out, r.sort.position, topk_w, r.y);
    kernels::combine_expert_outputs_backward(dy, expert_out, r.sort.position, topk_w, r.d_expert_out, r.d_topk_w);
    return r;
  };
  const Run a = run(), b = run();
  EXPECT_TRUE(device_bitwise_equal(a.sort.sorted_token, b.sort.sorted_token)) << "sorted_token";
  EXPECT_TRUE(device_bitwise_equal(a.sort.position, b.sort.position)) << "position";
  EXPECT_EQ(a.sort.offsets, b.sort.offsets) << "offsets";
  EXPECT_TRUE(device_bitwise_equal(a.y, b.y)) << "y";
  EXPECT_TRUE(device_bitwise_equal(a.d_expert_out, b.d_expert_out)) << "d_expert_out";
  EXPECT_TRUE(device_bitwise_equal(a.d_topk_w, b.d_topk_w)) << "d_topk_w";
}

}  // namespace
}  // namespace engram
