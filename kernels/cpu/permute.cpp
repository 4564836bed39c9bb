#include "kernels/permute.h"

#include <algorithm>

#include "kernels/checks.h"

namespace engram::kernels::cpu {

namespace {

void check_positions(const Tensor& position, int64_t n_assignments, const char* kernel) {
  const int32_t* pos = position.data<int32_t>();
  for (int64_t a = 0; a < n_assignments; ++a)
    if (pos[a] < 0 || pos[a] >= n_assignments) checks::position_outside(pos[a], n_assignments, kernel);
}

}  // namespace

ExpertSort sort_by_expert(const Tensor& topk_idx, int n_experts) {
  checks::sort_by_expert(topk_idx, n_experts);
  const int64_t total = topk_idx.numel();
  const int32_t* expert = topk_idx.data<int32_t>();
  ExpertSort out{Tensor::empty({total}, DType::I32), Tensor::empty({total}, DType::I32),
                 std::vector<int64_t>(n_experts + 1, 0)};
  for (int64_t a = 0; a < total; ++a) {
    if (expert[a] < 0 || expert[a] >= n_experts) checks::assignment_outside_experts(a, expert[a], n_experts);
    ++out.offsets[expert[a] + 1];
  }
  for (int e = 0; e < n_experts; ++e) out.offsets[e + 1] += out.offsets[e];
  // Counting sort: visiting a ascending keeps (t, k) order inside each expert's block.
  const int64_t k = topk_idx.cols();
  std::vector<int64_t> next(out.offsets.begin(), out.offsets.end() - 1);
  int32_t* sorted_token = out.sorted_token.data<int32_t>();
  int32_t* position = out.position.data<int32_t>();
  for (int64_t a = 0; a < total; ++a) {
    const int64_t p = next[expert[a]]++;
    sorted_token[p] = static_cast<int32_t>(a / k);
    position[a] = static_cast<int32_t>(p);
  }
  return out;
}

void combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, Tensor& y,
                            bool accumulate) {
  const auto [n, k, d] = checks::combine_expert_outputs(expert_out, position, topk_w, y);
  check_positions(position, n * k, "combine_expert_outputs");
  const float* eo = expert_out.data<float>();
  const int32_t* pos = position.data<int32_t>();
  const float* w = topk_w.defined() ? topk_w.data<float>() : nullptr;
  float* out = y.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    float* yt = out + t * d;
    if (!accumulate) std::fill(yt, yt + d, 0.0f);
    for (int64_t slot = 0; slot < k; ++slot) {
      const float wk = w ? w[t * k + slot] : 1.0f;
      const float* row = eo + pos[t * k + slot] * d;
      for (int64_t j = 0; j < d; ++j) yt[j] += wk * row[j];
    }
  }
}

void combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                     const Tensor& topk_w, Tensor& d_expert_out, Tensor& d_topk_w) {
  const auto [n, k, d] =
      checks::combine_expert_outputs_backward(dy, expert_out, position, topk_w, d_expert_out, d_topk_w);
  check_positions(position, n * k, "combine_expert_outputs_backward");
  const float* g = dy.data<float>();
  const float* eo = expert_out.data<float>();
  const int32_t* pos = position.data<int32_t>();
  const float* w = topk_w.data<float>();
  float* deo = d_expert_out.data<float>();
  float* dw = d_topk_w.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    const float* gt = g + t * d;
    for (int64_t slot = 0; slot < k; ++slot) {
      const int64_t a = t * k + slot;
      const float* row = eo + pos[a] * d;
      float* drow = deo + pos[a] * d;
      double dot = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        drow[j] = w[a] * gt[j];
        dot += static_cast<double>(gt[j]) * row[j];
      }
      dw[a] = static_cast<float>(dot);
    }
  }
}

}  // namespace engram::kernels::cpu
