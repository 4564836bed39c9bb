// CUDA router kernels against the CPU ones: both score functions, top-k with and without
// normalization (ties forced by quantized scores, NaN scores, E not a power of two and above 256,
// k = E, N = 1), the top-k backward, the auxiliary and z losses, the CPU's errors for experts outside
// the range (deferred to the next wait for topk_weights_backward, nothing written), and two runs that
// must agree bit for bit. Outputs start NaN (-1 for ids); accumulated
// outputs start from random values. Tolerances:
// - exact: topk ids and weights, the top-k backward and the sigmoid backward (the same expression in
//   the same order on both sides);
// - scores: rtol 1e-6 (the GPU's expf may differ from glibc's by an ulp or two; softmax's double exp
//   after rounding to float rarely differs at all);
// - softmax backward: the row dot product is summed in another order, so dotf may differ by an ulp:
//   rtol 1e-5 with atol 1e-7 (|dot| <= 1, and ds − dotf may cancel);
// - aux and z losses: their doubles are summed in another order, rtol 1e-12. Each gradient term is
//   rounded to float from doubles summed in another order, so it may (rarely) differ by an ulp before
//   it is added: rtol 1e-6 with atol 1e-6, over an ulp of any term here (all below 8).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/deferred_errors.h"
#include "kernels/router.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using kernels::ScoreFunc;
using namespace testing_util;

using CudaRouter = CudaTest;

struct Size {
  int64_t n, e;
  int k;
};
// N = 1, E = 1, E not a power of two, E above 256, k = E, and enough rows for many blocks.
const Size kSizes[] = {{1, 1, 1}, {1, 7, 3}, {37, 13, 13}, {203, 256, 8}, {67, 257, 16}, {130, 96, 6}};

std::string label(const Size& s) {
  return "N " + std::to_string(s.n) + ", E " + std::to_string(s.e) + ", k " + std::to_string(s.k);
}
const char* name(ScoreFunc func) { return func == ScoreFunc::Sigmoid ? "sigmoid" : "softmax"; }

// Values on a grid of 1/8 in [lo, hi]: many exact ties.
Tensor quantized(const Shape& shape, std::mt19937& gen, int lo_eighths, int hi_eighths) {
  std::uniform_int_distribution<int> eighths(lo_eighths, hi_eighths);
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(eighths(gen)) / 8.0f;
  return t;
}

struct TopK {
  HostDevice idx, w;
};
TopK topk_on_both(const HostDevice& scores, const HostDevice& bias, int k, bool normalize, float scale) {
  const int64_t n = scores.cpu.rows();
  TopK r{on_both(poisoned_ids<int32_t>({n, k})), nan_on_both({n, k})};
  kernels::topk_select(scores.cpu, bias.cpu, k, normalize, scale, r.idx.cpu, r.w.cpu);
  kernels::topk_select(scores.gpu, bias.gpu, k, normalize, scale, r.idx.gpu, r.w.gpu);
  return r;
}

TEST_F(CudaRouter, ScoresAndTheirBackwardMatchTheCpu) {
  std::mt19937 gen(61);
  for (ScoreFunc func : {ScoreFunc::Sigmoid, ScoreFunc::Softmax}) {
    for (const Size& s : kSizes) {
      const std::string what = std::string(name(func)) + ", " + label(s);
      const HostDevice logits = random_on_both({s.n, s.e}, gen, -6.0f, 6.0f);
      HostDevice scores = nan_on_both({s.n, s.e});
      kernels::router_scores(logits.cpu, func, scores.cpu);
      kernels::router_scores(logits.gpu, func, scores.gpu);
      expect_close_to_cpu(scores.gpu, scores.cpu, 1e-6, 0.0, "scores, " + what);

      // The backward from the same scores on both sides.
      const HostDevice same_scores = on_both(scores.cpu);
      const HostDevice dscores = random_on_both({s.n, s.e}, gen);
      HostDevice dlogits = nan_on_both({s.n, s.e});
      kernels::router_scores_backward(dscores.cpu, same_scores.cpu, func, dlogits.cpu);
      kernels::router_scores_backward(dscores.gpu, same_scores.gpu, func, dlogits.gpu);
      if (func == ScoreFunc::Sigmoid) {
        expect_bitwise_equal_to_cpu(dlogits.gpu, dlogits.cpu, "dlogits, " + what);
      } else {
        expect_close_to_cpu(dlogits.gpu, dlogits.cpu, 1e-5, 1e-7, "dlogits, " + what);
      }
    }
  }
}

TEST_F(CudaRouter, TopkSelectionAndWeightsEqualTheCpus) {
  std::mt19937 gen(62);
  for (const Size& s : kSizes) {
    for (bool normalize : {false, true}) {
      for (bool ties : {false, true}) {
        const std::string what = label(s) + (normalize ? ", normalized" : "") + (ties ? ", ties" : "");
        // Ties: scores and bias on a grid of 1/8, so keys often tie exactly (scores above 0, so the
        // normalizing sum is never 0: NaN bits differ between the host and the device).
        const HostDevice scores = on_both(ties ? quantized({s.n, s.e}, gen, 1, 8)
                                               : random_uniform({s.n, s.e}, gen, 0.0f, 1.0f));
        const HostDevice bias =
            on_both(ties ? quantized({s.e}, gen, -2, 2) : random_uniform({s.e}, gen, -0.2f, 0.2f));
        const TopK r = topk_on_both(scores, bias, s.k, normalize, 1.7f);
        expect_bitwise_equal_to_cpu(r.idx.gpu, r.idx.cpu, "topk_idx, " + what);
        expect_bitwise_equal_to_cpu(r.w.gpu, r.w.cpu, "topk_w, " + what);
      }
    }
  }
}

TEST_F(CudaRouter, TopkWithNanScoresPicksTheCpusExperts) {
  // The CPU's scan takes a NaN key only when it is the lowest remaining index: NaNs at the start of
  // a row, in the middle, everywhere, and beside ties.
  std::mt19937 gen(63);
  const int64_t n = 41, e = 45;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor scores = quantized({n, e}, gen, 1, 4);
  std::bernoulli_distribution sprinkle(0.2);
  for (int64_t t = 0; t < n; ++t) {
    float* row = scores.data<float>() + t * e;
    // Every third row mostly NaN, the last row all NaN, the others a fifth NaN.
    for (int64_t j = 0; j < e; ++j)
      if (t == n - 1 || (t % 3 == 0 ? j % 7 != 0 : sprinkle(gen))) row[j] = nan;
    if (t % 4 == 0) row[0] = nan;
    if (t % 5 == 0) row[1] = nan;
  }
  const HostDevice s = on_both(scores);
  const HostDevice bias = on_both(quantized({e}, gen, -1, 1));
  for (int k : {1, 5, 45}) {
    const TopK r = topk_on_both(s, bias, k, true, 1.0f);
    expect_bitwise_equal_to_cpu(r.idx.gpu, r.idx.cpu, "topk_idx with NaN scores, k " + std::to_string(k));
  }
}

TEST_F(CudaRouter, TopkWeightsBackwardEqualsTheCpus) {
  std::mt19937 gen(64);
  for (const Size& s : kSizes) {
    for (bool normalize : {false, true}) {
      const std::string what = label(s) + (normalize ? ", normalized" : "");
      const HostDevice scores = random_on_both({s.n, s.e}, gen, 0.05f, 1.0f);
      const TopK r = topk_on_both(scores, on_both(Tensor::zeros({s.e})), s.k, normalize, 1.7f);
      const HostDevice topk_idx = on_both(r.idx.cpu);
      const HostDevice d_topk_w = random_on_both({s.n, s.k}, gen);
      HostDevice dscores = random_on_both({s.n, s.e}, gen);  // accumulated into
      kernels::topk_weights_backward(d_topk_w.cpu, scores.cpu, topk_idx.cpu, normalize, 1.7f, dscores.cpu);
      kernels::topk_weights_backward(d_topk_w.gpu, scores.gpu, topk_idx.gpu, normalize, 1.7f, dscores.gpu);
      expect_bitwise_equal_to_cpu(dscores.gpu, dscores.cpu, "dscores, " + what);
    }
  }
}

TEST_F(CudaRouter, AuxAndZLossesMatchTheCpu) {
  std::mt19937 gen(65);
  for (ScoreFunc func : {ScoreFunc::Sigmoid, ScoreFunc::Softmax}) {
    for (const Size& s : kSizes) {
      const std::string what = std::string(name(func)) + ", " + label(s);
      const HostDevice logits = random_on_both({s.n, s.e}, gen, -4.0f, 4.0f);
      Tensor cpu_scores = nan_tensor({s.n, s.e});
      kernels::router_scores(logits.cpu, func, cpu_scores);
      const HostDevice scores = on_both(cpu_scores);
      const TopK r = topk_on_both(scores, random_on_both({s.e}, gen, -0.1f, 0.1f), s.k, true, 1.0f);
      const HostDevice topk_idx = on_both(r.idx.cpu);

      HostDevice dscores = random_on_both({s.n, s.e}, gen);
      const double aux_cpu = kernels::moe_aux_loss(scores.cpu, topk_idx.cpu, 0.37f, dscores.cpu);
      const double aux_gpu = kernels::moe_aux_loss(scores.gpu, topk_idx.gpu, 0.37f, dscores.gpu);
      EXPECT_NEAR(aux_gpu, aux_cpu, 1e-12 * std::fabs(aux_cpu)) << "aux loss, " << what;
      expect_close_to_cpu(dscores.gpu, dscores.cpu, 1e-6, 1e-6, "aux dscores, " + what);

      HostDevice dlogits = random_on_both({s.n, s.e}, gen);
      const double z_cpu = kernels::router_z_loss(logits.cpu, 0.25f, dlogits.cpu);
      const double z_gpu = kernels::router_z_loss(logits.gpu, 0.25f, dlogits.gpu);
      EXPECT_NEAR(z_gpu, z_cpu, 1e-12 * std::fabs(z_cpu)) << "z loss, " << what;
      expect_close_to_cpu(dlogits.gpu, dlogits.cpu, 1e-6, 1e-6, "z dlogits, " + what);
    }
  }
}

TEST_F(CudaRouter, LossesOfNoTokensAreZero) {
  Tensor scores = Tensor::empty({0, 5}, DType::F32, Device::CUDA), dscores = scores.clone();
  Tensor topk_idx = Tensor::empty({0, 2}, DType::I32, Device::CUDA);
  EXPECT_EQ(kernels::moe_aux_loss(scores, topk_idx, 1.0f, dscores), 0.0);
  EXPECT_EQ(kernels::router_z_loss(scores, 1.0f, dscores), 0.0);
}

TEST_F(CudaRouter, ExpertsOutsideTheRangeAreTheCpuErrors) {
  const Tensor scores = Tensor::full({2, 5}, 0.5f).copy_to(Device::CUDA);
  const Tensor d_topk_w = Tensor::full({2, 2}, 1.0f).copy_to(Device::CUDA);
  Tensor dscores = Tensor::zeros({2, 5}).copy_to(Device::CUDA);
  const Tensor valid = Tensor::from_vector<int32_t>({0, 1, 2, 3}, {2, 2}).copy_to(Device::CUDA);
  // The first bad entry (in flat order) is the one named. topk_weights_backward does not wait: the
  // error comes at the next wait, here the explicit one.
  const Tensor too_large = Tensor::from_vector<int32_t>({0, 1, 5, 7}, {2, 2}).copy_to(Device::CUDA);
  kernels::topk_weights_backward(d_topk_w, scores, too_large, true, 1.0f, dscores);
  expect_error([] { kernels::cuda::check_deferred_errors(); },
               {"topk_weights_backward topk_idx holds expert 5 outside [0, 5)"});
  // moe_aux_loss waits for its sum, so it raises its own error.
  const Tensor negative = Tensor::from_vector<int32_t>({0, 1, 2, -1}, {2, 2}).copy_to(Device::CUDA);
  expect_error([&] { kernels::moe_aux_loss(scores, negative, 1.0f, dscores); },
               {"moe_aux_loss topk_idx holds expert -1 outside [0, 5)"});
  // A deferred error surfaces at the next wait of another kernel, and only once.
  kernels::topk_weights_backward(d_topk_w, scores, negative, false, 1.0f, dscores);
  expect_error([&] { kernels::moe_aux_loss(scores, valid, 0.0f, dscores); },
               {"topk_weights_backward topk_idx holds expert -1 outside [0, 5)"});
  kernels::cuda::check_deferred_errors();
  EXPECT_TRUE(bitwise_equal(dscores.copy_to(Device::CPU), Tensor::zeros({2, 5}))) << "dscores written on a bad id";
  // Valid ids after the errors still write (the kernels' checks were reset).
  kernels::topk_weights_backward(d_topk_w, scores, valid, false, 1.0f, dscores);
  kernels::cuda::check_deferred_errors();
  EXPECT_EQ(dscores.to_vector<float>(), (std::vector<float>{1, 1, 0, 0, 0, 0, 0, 1, 1, 0}));
}

// Every kernel twice on the same inputs: the same bits (losses included).
TEST_F(CudaRouter, RunsRepeatBitwise) {
  std::mt19937 gen(66);
  const int64_t n = 2051, e = 256;
  const int k = 8;
  const Tensor logits = random_uniform({n, e}, gen, -4.0f, 4.0f).copy_to(Device::CUDA);
  const Tensor bias = random_uniform({e}, gen, -0.1f, 0.1f).copy_to(Device::CUDA);
  const Tensor grad = random_uniform({n, e}, gen).copy_to(Device::CUDA);
  const Tensor d_topk_w = random_uniform({n, k}, gen).copy_to(Device::CUDA);
  for (ScoreFunc func : {ScoreFunc::Sigmoid, ScoreFunc::Softmax}) {
    struct Run {
      Tensor scores, dlogits, idx, w, dscores, z_dlogits;
      double aux = 0.0, z = 0.0;
    };
    auto run = [&] {
      Run r{Tensor::empty({n, e}, DType::F32, Device::CUDA), Tensor::empty({n, e}, DType::F32, Device::CUDA),
            Tensor::empty({n, k}, DType::I32, Device::CUDA), Tensor::empty({n, k}, DType::F32, Device::CUDA),
            grad.clone(), grad.clone()};
      kernels::router_scores(logits, func, r.scores);
      kernels::router_scores_backward(grad, r.scores, func, r.dlogits);
      kernels::topk_select(r.scores, bias, k, true, 2.5f, r.idx, r.w);
      kernels::topk_weights_backward(d_topk_w, r.scores, r.idx, true, 2.5f, r.dscores);
      r.aux = kernels::moe_aux_loss(r.scores, r.idx, 0.37f, r.dscores);
      r.z = kernels::router_z_loss(logits, 0.25f, r.z_dlogits);
      return r;
    };
    const Run a = run(), b = run();
    const std::string what = name(func);
    EXPECT_TRUE(device_bitwise_equal(a.scores, b.scores)) << "scores, " << what;
    EXPECT_TRUE(device_bitwise_equal(a.dlogits, b.dlogits)) << "dlogits, " << what;
    EXPECT_TRUE(device_bitwise_equal(a.idx, b.idx)) << "topk_idx, " << what;
    EXPECT_TRUE(device_bitwise_equal(a.w, b.w)) << "topk_w, " << what;
    EXPECT_TRUE(device_bitwise_equal(a.dscores, b.dscores)) << "dscores, " << what;
    EXPECT_TRUE(device_bitwise_equal(a.z_dlogits, b.z_dlogits)) << "z dlogits, " << what;
    EXPECT_EQ(a.aux, b.aux) << what;
    EXPECT_EQ(a.z, b.z) << what;
  }
}

}  // namespace
}  // namespace engram
