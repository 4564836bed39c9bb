#include "kernels/router.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/checks.h"

namespace engram::kernels::cpu {

namespace {

void check_experts(const Tensor& topk_idx, int64_t n_experts, const char* kernel) {
  const int32_t* idx = topk_idx.data<int32_t>();
  for (int64_t i = 0; i < topk_idx.numel(); ++i)
    if (idx[i] < 0 || idx[i] >= n_experts) checks::expert_outside(idx[i], n_experts, kernel);
}

// logsumexp of one row, in double.
double logsumexp(const float* x, int64_t n) {
  const double mx = *std::max_element(x, x + n);
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - mx);
  return mx + std::log(sum);
}

}  // namespace

void router_scores(const Tensor& logits, ScoreFunc func, Tensor& scores) {
  const int64_t n = logits.rows(), e = logits.cols();
  checks::router_scores(logits, scores);
  const float* x = logits.data<float>();
  float* s = scores.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * e;
    float* sr = s + t * e;
    if (func == ScoreFunc::Sigmoid) {
      for (int64_t j = 0; j < e; ++j) sr[j] = 1.0f / (1.0f + std::exp(-xr[j]));
    } else {
      const double lse = logsumexp(xr, e);
      for (int64_t j = 0; j < e; ++j) sr[j] = static_cast<float>(std::exp(xr[j] - lse));
    }
  }
}

void router_scores_backward(const Tensor& dscores, const Tensor& scores, ScoreFunc func, Tensor& dlogits) {
  const int64_t n = scores.rows(), e = scores.cols();
  checks::router_scores_backward(dscores, scores, dlogits);
  const float* ds = dscores.data<float>();
  const float* s = scores.data<float>();
  float* dl = dlogits.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    const float* dsr = ds + t * e;
    const float* sr = s + t * e;
    float* dlr = dl + t * e;
    if (func == ScoreFunc::Sigmoid) {
      for (int64_t j = 0; j < e; ++j) dlr[j] = dsr[j] * sr[j] * (1.0f - sr[j]);
    } else {
      // Softmax Jacobian: dl_j = s_j · (ds_j − Σ_i ds_i s_i).
      double dot = 0.0;
      for (int64_t j = 0; j < e; ++j) dot += static_cast<double>(dsr[j]) * sr[j];
      const float dotf = static_cast<float>(dot);
      for (int64_t j = 0; j < e; ++j) dlr[j] = sr[j] * (dsr[j] - dotf);
    }
  }
}

void topk_select(const Tensor& scores, const Tensor& bias, int k, bool normalize, float routed_scale,
                 Tensor& topk_idx, Tensor& topk_w) {
  const int64_t n = scores.rows(), e = scores.cols();
  checks::topk_select(scores, bias, k, topk_idx, topk_w);
  const float* s = scores.data<float>();
  const float* b = bias.data<float>();
  int32_t* idx = topk_idx.data<int32_t>();
  float* w = topk_w.data<float>();
  std::vector<float> key(e);
  std::vector<char> taken(e);
  for (int64_t t = 0; t < n; ++t) {
    const float* sr = s + t * e;
    for (int64_t j = 0; j < e; ++j) key[j] = sr[j] + b[j];
    std::fill(taken.begin(), taken.end(), 0);
    int32_t* it = idx + t * k;
    float* wt = w + t * k;
    // k passes of "largest remaining key, lowest index on ties": strict > keeps the first maximum,
    // and NaN keys can never break the selection.
    for (int slot = 0; slot < k; ++slot) {
      int64_t best = -1;
      for (int64_t j = 0; j < e; ++j)
        if (!taken[j] && (best < 0 || key[j] > key[best])) best = j;
      taken[best] = 1;
      it[slot] = static_cast<int32_t>(best);
    }
    double sum = 0.0;
    for (int slot = 0; slot < k; ++slot) sum += sr[it[slot]];
    for (int slot = 0; slot < k; ++slot)
      wt[slot] = static_cast<float>((normalize ? sr[it[slot]] / sum : sr[it[slot]]) * routed_scale);
  }
}

void topk_weights_backward(const Tensor& d_topk_w, const Tensor& scores, const Tensor& topk_idx, bool normalize,
                           float routed_scale, Tensor& dscores) {
  const int64_t n = scores.rows(), e = scores.cols();
  checks::topk_weights_backward(d_topk_w, scores, topk_idx, dscores);
  check_experts(topk_idx, e, "topk_weights_backward");
  const int64_t k = topk_idx.cols();
  const float* s = scores.data<float>();
  const int32_t* idx = topk_idx.data<int32_t>();
  const float* dw = d_topk_w.data<float>();
  float* ds = dscores.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    const float* sr = s + t * e;
    const int32_t* it = idx + t * k;
    const float* dwt = dw + t * k;
    float* dsr = ds + t * e;
    if (!normalize) {
      for (int64_t slot = 0; slot < k; ++slot) dsr[it[slot]] += routed_scale * dwt[slot];
      continue;
    }
    // w_k = c·s_k/Σ ⇒ ∂(Σ_k dw_k w_k)/∂s_m = c/Σ · (dw_m − Σ_k dw_k s_k / Σ).
    double sum = 0.0, dot = 0.0;
    for (int64_t slot = 0; slot < k; ++slot) {
      sum += sr[it[slot]];
      dot += static_cast<double>(dwt[slot]) * sr[it[slot]];
    }
    const double mean = dot / sum;
    for (int64_t slot = 0; slot < k; ++slot)
      dsr[it[slot]] += static_cast<float>(routed_scale / sum * (dwt[slot] - mean));
  }
}

double moe_aux_loss(const Tensor& scores, const Tensor& topk_idx, float grad_scale, Tensor& dscores) {
  const int64_t n = scores.rows(), e = scores.cols();
  checks::moe_aux_loss(scores, topk_idx, dscores);
  check_experts(topk_idx, e, "moe_aux_loss");
  if (n == 0) return 0.0;
  const int64_t k = topk_idx.cols();
  const float* s = scores.data<float>();
  const int32_t* idx = topk_idx.data<int32_t>();
  float* ds = dscores.data<float>();

  std::vector<double> f(e, 0.0), p(e, 0.0);
  for (int64_t a = 0; a < n * k; ++a) f[idx[a]] += 1.0;
  for (double& fi : f) fi /= static_cast<double>(n * k);
  std::vector<double> row_sum(n);
  for (int64_t t = 0; t < n; ++t) {
    const float* sr = s + t * e;
    double sum = 0.0;
    for (int64_t j = 0; j < e; ++j) sum += sr[j];
    row_sum[t] = sum;
    for (int64_t j = 0; j < e; ++j) p[j] += sr[j] / sum;
  }
  double loss = 0.0;
  for (int64_t j = 0; j < e; ++j) loss += f[j] * p[j] / static_cast<double>(n);

  // ∂loss/∂s_tm = (f_m − Σ_i f_i s_ti / S_t) / (N·S_t), S_t = Σ_j s_tj.
  for (int64_t t = 0; t < n; ++t) {
    const float* sr = s + t * e;
    double fs = 0.0;
    for (int64_t j = 0; j < e; ++j) fs += f[j] * sr[j];
    const double weighted_mean = fs / row_sum[t], scale = grad_scale / (static_cast<double>(n) * row_sum[t]);
    float* dsr = ds + t * e;
    for (int64_t j = 0; j < e; ++j) dsr[j] += static_cast<float>(scale * (f[j] - weighted_mean));
  }
  return loss;
}

double router_z_loss(const Tensor& logits, float grad_scale, Tensor& dlogits) {
  const int64_t n = logits.rows(), e = logits.cols();
  checks::router_z_loss(logits, dlogits);
  const float* x = logits.data<float>();
  float* dl = dlogits.data<float>();
  double loss = 0.0;
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * e;
    const double lse = logsumexp(xr, e);
    loss += lse * lse;
    // ∂lse²/∂x_j = 2·lse·softmax(x)_j.
    const double scale = grad_scale * 2.0 * lse;
    float* dlr = dl + t * e;
    for (int64_t j = 0; j < e; ++j) dlr[j] += static_cast<float>(scale * std::exp(xr[j] - lse));
  }
  return loss;
}

}  // namespace engram::kernels::cpu
