// Softmax cross-entropy against a naive double-precision reference and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/cross_entropy.h"
#include "tests/test_util.h"

namespace engram {
namespace {

using namespace testing_util;

// Per-row loss log Σ_j exp(l_j) − l_y, straight from the definition (inputs kept moderate).
std::vector<double> naive_losses(const std::vector<double>& logits, const std::vector<int32_t>& y,
                                 int64_t vocab) {
  std::vector<double> losses(y.size());
  for (size_t r = 0; r < y.size(); ++r) {
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(logits[r * vocab + j]);
    losses[r] = std::log(sum) - logits[r * vocab + y[r]];
  }
  return losses;
}

TEST(KernelCrossEntropy, ForwardMatchesNaive) {
  std::mt19937 gen(1);
  const int64_t sizes[][2] = {{1, 1}, {7, 13}, {3, 33}, {13, 2}};
  for (const auto& s : sizes) {
    const int64_t rows = s[0], vocab = s[1];
    Tensor logits = random_uniform({rows, vocab}, gen, -4.0f, 4.0f);
    Tensor targets = random_ids<int32_t>({rows}, vocab, gen);
    Tensor losses = nan_tensor({rows});
    kernels::cross_entropy_forward(logits, targets, losses);
    const std::vector<double> expected = naive_losses(to_double(logits), targets.to_vector<int32_t>(), vocab);
    expect_close(losses, expected, 0.0, 1e-5, "losses");
  }
}

TEST(KernelCrossEntropy, UniformLogitsGiveLogV) {
  const int64_t vocab = 33;
  Tensor logits = Tensor::full({3, vocab}, 3.7f);
  Tensor targets = Tensor::from_vector(std::vector<int32_t>{0, 17, 32}, {3});
  Tensor losses = nan_tensor({3});
  kernels::cross_entropy_forward(logits, targets, losses);
  expect_close(losses, std::vector<double>(3, std::log(double(vocab))), 0.0, 1e-6, "losses");
}

TEST(KernelCrossEntropy, LargeLogitsStayFinite) {
  std::mt19937 gen(2);
  // exp(1e4) overflows: the row max must be subtracted. Loss is invariant to a per-row shift.
  Tensor logits = random_uniform({5, 13}, gen, -4.0f, 4.0f);
  Tensor targets = random_ids<int32_t>({5}, 13, gen);
  const std::vector<double> expected = naive_losses(to_double(logits), targets.to_vector<int32_t>(), 13);
  Tensor shifted = logits.clone();
  for (int64_t i = 0; i < shifted.numel(); ++i) shifted.data<float>()[i] += 1e4f;
  Tensor losses = nan_tensor({5});
  kernels::cross_entropy_forward(shifted, targets, losses);
  expect_close(losses, expected, 0.0, 5e-3, "losses");  // the shift itself rounds logits to ~1e-3
}

TEST(KernelCrossEntropy, GradientMatchesNaiveAndFiniteDifferences) {
  std::mt19937 gen(3);
  const int64_t rows = 7, vocab = 13;
  const float grad_scale = 0.37f;
  Tensor logits = random_uniform({rows, vocab}, gen, -4.0f, 4.0f);
  Tensor targets = random_ids<int32_t>({rows}, vocab, gen);
  Tensor losses = nan_tensor({rows}), dlogits = nan_tensor({rows, vocab});
  kernels::cross_entropy_forward_backward(logits, targets, grad_scale, losses, dlogits);

  const std::vector<double> ld = to_double(logits);
  const std::vector<int32_t> y = targets.to_vector<int32_t>();
  expect_close(losses, naive_losses(ld, y, vocab), 0.0, 1e-5, "losses");
  // Naive: grad_scale · (softmax − onehot).
  std::vector<double> grad_ref(ld.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(ld[r * vocab + j]);
    for (int64_t j = 0; j < vocab; ++j)
      grad_ref[r * vocab + j] = grad_scale * (std::exp(ld[r * vocab + j]) / sum - (j == y[r] ? 1.0 : 0.0));
  }
  expect_close(dlogits, grad_ref, 0.0, 1e-6, "dlogits");
  // L = grad_scale · Σ_r loss_r, central differences on the naive forward.
  std::vector<double> probe = ld;
  auto total = [&] {
    double sum = 0.0;
    for (double v : naive_losses(probe, y, vocab)) sum += grad_scale * v;
    return sum;
  };
  expect_close(dlogits, numeric_gradient(probe, total, 1e-6), 0.0, 1e-6, "dlogits by finite differences");
}

TEST(KernelCrossEntropy, GradientMayOverwriteLogits) {
  std::mt19937 gen(4);
  Tensor logits = random_uniform({7, 33}, gen, -4.0f, 4.0f);
  Tensor targets = random_ids<int32_t>({7}, 33, gen);
  Tensor losses = nan_tensor({7}), dlogits = nan_tensor({7, 33});
  kernels::cross_entropy_forward_backward(logits, targets, 1.0f, losses, dlogits);
  Tensor losses_inplace = nan_tensor({7});
  kernels::cross_entropy_forward_backward(logits, targets, 1.0f, losses_inplace, logits);
  EXPECT_EQ(losses_inplace.to_vector<float>(), losses.to_vector<float>());
  EXPECT_EQ(logits.to_vector<float>(), dlogits.to_vector<float>());
}

TEST(KernelCrossEntropy, OutOfRangeTargetThrowsNamingIt) {
  Tensor logits = Tensor::zeros({3, 5}), losses = Tensor::zeros({3}), dlogits = Tensor::zeros({3, 5});
  for (int32_t bad : {5, -1, 1000}) {
    Tensor targets = Tensor::from_vector(std::vector<int32_t>{0, bad, 4}, {3});
    try {
      kernels::cross_entropy_forward(logits, targets, losses);
      FAIL() << "expected engram::Error for target " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
    EXPECT_THROW(kernels::cross_entropy_forward_backward(logits, targets, 1.0f, losses, dlogits), Error);
  }
}

}  // namespace
}  // namespace engram
