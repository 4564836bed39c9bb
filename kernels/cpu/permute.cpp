#include "kernels/permute.h"

#include <algorithm>

namespace engram::kernels::cpu {

namespace {

struct CombineDims {
  int64_t n, k, d;
};
// Checks the shapes combine and its backward share; returns (N, K, D).
CombineDims combine_dims(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, const char* what) {
  check_dtype(expert_out, DType::F32, what);
  check_dtype(position, DType::I32, what);
  check_dtype(topk_w, DType::F32, what);
  const int64_t n = topk_w.rows(), k = topk_w.cols(), d = expert_out.cols();
  EG_ASSERT(position.numel() == n * k && expert_out.rows() == n * k, what, ": position ", position.describe(),
            " and expert_out ", expert_out.describe(), " need N·K = ", n * k, " rows for topk_w ",
            topk_w.describe());
  const int32_t* pos = position.data<int32_t>();
  for (int64_t a = 0; a < n * k; ++a)
    EG_ASSERT(pos[a] >= 0 && pos[a] < n * k, what, ": position ", pos[a], " outside [0, ", n * k, ")");
  return {n, k, d};
}

}  // namespace

ExpertSort sort_by_expert(const Tensor& topk_idx, int n_experts) {
  check_dtype(topk_idx, DType::I32, "sort_by_expert topk_idx");
  EG_CHECK(n_experts >= 1, "sort_by_expert: n_experts = ", n_experts, " must be >= 1");
  const int64_t total = topk_idx.numel();
  const int32_t* expert = topk_idx.data<int32_t>();
  ExpertSort out{Tensor::empty({total}, DType::I32), Tensor::empty({total}, DType::I32),
                 std::vector<int64_t>(n_experts + 1, 0)};
  for (int64_t a = 0; a < total; ++a) {
    EG_CHECK(expert[a] >= 0 && expert[a] < n_experts, "sort_by_expert: assignment ", a, " names expert ",
             expert[a], ", outside [0, ", n_experts, ")");
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

void combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, Tensor& y) {
  const auto [n, k, d] = combine_dims(expert_out, position, topk_w, "combine_expert_outputs");
  check_dtype(y, DType::F32, "combine_expert_outputs y");
  EG_ASSERT(y.rows() == n && y.cols() == d, "combine_expert_outputs y ", y.describe(), " is not [", n, ", ", d, "]");
  const float* eo = expert_out.data<float>();
  const int32_t* pos = position.data<int32_t>();
  const float* w = topk_w.data<float>();
  float* out = y.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    float* yt = out + t * d;
    std::fill(yt, yt + d, 0.0f);
    for (int64_t slot = 0; slot < k; ++slot) {
      const float wk = w[t * k + slot];
      const float* row = eo + pos[t * k + slot] * d;
      for (int64_t j = 0; j < d; ++j) yt[j] += wk * row[j];
    }
  }
}

void combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                     const Tensor& topk_w, Tensor& d_expert_out, Tensor& d_topk_w) {
  const auto [n, k, d] = combine_dims(expert_out, position, topk_w, "combine_expert_outputs_backward");
  check_dtype(dy, DType::F32, "combine_expert_outputs_backward dy");
  EG_ASSERT(dy.rows() == n && dy.cols() == d, "combine_expert_outputs_backward dy ", dy.describe(), " is not [",
            n, ", ", d, "]");
  check_shape(d_expert_out, expert_out.shape(), "combine_expert_outputs_backward d_expert_out");
  check_dtype(d_expert_out, DType::F32, "combine_expert_outputs_backward d_expert_out");
  check_shape(d_topk_w, topk_w.shape(), "combine_expert_outputs_backward d_topk_w");
  check_dtype(d_topk_w, DType::F32, "combine_expert_outputs_backward d_topk_w");
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
