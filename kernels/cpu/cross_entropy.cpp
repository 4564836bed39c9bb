// Softmax cross-entropy on the CPU, numerically stable (row max subtracted before exp).
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/checks.h"

namespace engram::kernels::cpu {

namespace {

struct RowExp {
  float max;   // row maximum
  double sum;  // Σ_j exp(row[j] − max), accumulated in double (V is large)
  double logsumexp() const { return max + std::log(sum); }
};

// Writes exp(row[j] − max) into `exps`, which may alias `row`: one float exponential per logit,
// the dominant cost at large V, reused by the backward.
RowExp row_exp(const float* row, int64_t vocab, float* exps) {
  RowExp r{*std::max_element(row, row + vocab), 0.0};
  for (int64_t j = 0; j < vocab; ++j) {
    const float e = std::exp(row[j] - r.max);
    exps[j] = e;
    r.sum += e;
  }
  return r;
}

int32_t checked_target(const int32_t* targets, int64_t row, int64_t vocab) {
  const int32_t y = targets[row];
  EG_CHECK(y >= 0 && y < vocab, "cross_entropy: target ", y, " at row ", row,
           " is outside the vocabulary [0, ", vocab, ")");
  return y;
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& losses) {
  const int64_t vocab = checks::cross_entropy(logits, targets, losses, nullptr);
  const float* lp = logits.data<float>();
  const int32_t* tp = targets.data<int32_t>();
  float* loss_p = losses.data<float>();
  std::vector<float> exps(static_cast<size_t>(vocab));
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    const float* row = lp + r * vocab;
    const int32_t y = checked_target(tp, r, vocab);
    loss_p[r] = static_cast<float>(row_exp(row, vocab, exps.data()).logsumexp() - row[y]);
  }
}

void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, float grad_scale,
                                    Tensor& losses, Tensor& dlogits) {
  const int64_t vocab = checks::cross_entropy(logits, targets, losses, &dlogits);
  const float* lp = logits.data<float>();
  const int32_t* tp = targets.data<int32_t>();
  float* loss_p = losses.data<float>();
  float* dp = dlogits.data<float>();
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    const float* row = lp + r * vocab;
    float* drow = dp + r * vocab;
    const int32_t y = checked_target(tp, r, vocab);
    const float target_logit = row[y];  // read before drow, which may alias row, is written
    const RowExp e = row_exp(row, vocab, drow);
    loss_p[r] = static_cast<float>(e.logsumexp() - target_logit);
    // softmax_j = exp(row[j] − max) / Σ; dlogits = grad_scale · (softmax − onehot(y)).
    const float scale = static_cast<float>(grad_scale / e.sum);
    for (int64_t j = 0; j < vocab; ++j) drow[j] *= scale;
    drow[y] -= grad_scale;
  }
}

}  // namespace engram::kernels::cpu
