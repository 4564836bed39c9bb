// Causal attention on the CPU. Each (batch, head) is copied into contiguous [T, d_h] scratch so the
// score and output products run as sgemm; scores are computed for the full [T, T] square and masked.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/checks.h"
#include "kernels/gemm.h"

namespace engram::kernels::cpu {

namespace {

using checks::AttentionDims;

// Copies head h of sequence b of x [B, T, H, d_h] into dst [T, d_h].
void gather_head(const Tensor& x, const AttentionDims& l, int64_t b, int64_t h, Tensor& dst) {
  const float* xp = x.data<float>();
  float* dp = dst.data<float>();
  for (int64_t t = 0; t < l.seq; ++t) {
    const float* src = xp + l.at(b, t, h);
    std::copy(src, src + l.head_dim, dp + t * l.head_dim);
  }
}

// Writes src [T, d_h] into head h of sequence b of x [B, T, H, d_h].
void scatter_head(const Tensor& src, const AttentionDims& l, int64_t b, int64_t h, Tensor& x) {
  const float* sp = src.data<float>();
  float* xp = x.data<float>();
  for (int64_t t = 0; t < l.seq; ++t)
    std::copy(sp + t * l.head_dim, sp + (t + 1) * l.head_dim, xp + l.at(b, t, h));
}

// scores [T, T] (scaled) -> probabilities exp(s_ij − lse_i) for j ≤ i, 0 above the diagonal (in place).
void probabilities_from_lse(Tensor& scores, const float* lse) {
  const int64_t seq = scores.dim(0);
  float* sp = scores.data<float>();
  for (int64_t i = 0; i < seq; ++i) {
    float* row = sp + i * seq;
    for (int64_t j = 0; j <= i; ++j) row[j] = std::exp(row[j] - lse[i]);
    for (int64_t j = i + 1; j < seq; ++j) row[j] = 0.0f;
  }
}

// Log-sum-exp of each row of the causally masked scores [T, T] (columns j ≤ i).
void masked_row_logsumexp(const Tensor& scores, float* lse) {
  const int64_t seq = scores.dim(0);
  const float* sp = scores.data<float>();
  for (int64_t i = 0; i < seq; ++i) {
    const float* row = sp + i * seq;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j <= i; ++j) max = std::max(max, row[j]);
    double sum = 0.0;
    for (int64_t j = 0; j <= i; ++j) sum += std::exp(static_cast<double>(row[j]) - max);
    lse[i] = static_cast<float>(max + std::log(sum));
  }
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse) {
  const AttentionDims l = checks::attention_forward(q, k, v, out, lse, DType::F32);
  const float scale = 1.0f / std::sqrt(static_cast<float>(l.head_dim));
  Tensor q_h = Tensor::empty({l.seq, l.head_dim}), k_h = Tensor::empty({l.seq, l.head_dim});
  Tensor v_h = Tensor::empty({l.seq, l.head_dim}), o_h = Tensor::empty({l.seq, l.head_dim});
  Tensor probs = Tensor::empty({l.seq, l.seq});
  float* lse_p = lse.data<float>();
  for (int64_t b = 0; b < l.batch; ++b) {
    for (int64_t h = 0; h < l.heads; ++h) {
      gather_head(q, l, b, h, q_h);
      gather_head(k, l, b, h, k_h);
      gather_head(v, l, b, h, v_h);
      float* lse_bh = lse_p + (b * l.heads + h) * l.seq;
      gemm(q_h, false, k_h, true, probs, scale);
      masked_row_logsumexp(probs, lse_bh);
      probabilities_from_lse(probs, lse_bh);
      gemm(probs, false, v_h, false, o_h);
      scatter_head(o_h, l, b, h, out);
    }
  }
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
  const AttentionDims l = checks::attention_backward(dout, q, k, v, out, lse, dq, dk, dv, DType::F32);
  const float scale = 1.0f / std::sqrt(static_cast<float>(l.head_dim));
  const Shape head_shape{l.seq, l.head_dim};
  Tensor q_h = Tensor::empty(head_shape), k_h = Tensor::empty(head_shape), v_h = Tensor::empty(head_shape);
  Tensor do_h = Tensor::empty(head_shape), grad_h = Tensor::empty(head_shape);
  Tensor probs = Tensor::empty({l.seq, l.seq}), dscores = Tensor::empty({l.seq, l.seq});
  const float* lse_p = lse.data<float>();
  const float* out_p = out.data<float>();
  const float* dout_p = dout.data<float>();
  for (int64_t b = 0; b < l.batch; ++b) {
    for (int64_t h = 0; h < l.heads; ++h) {
      gather_head(q, l, b, h, q_h);
      gather_head(k, l, b, h, k_h);
      gather_head(v, l, b, h, v_h);
      gather_head(dout, l, b, h, do_h);
      gemm(q_h, false, k_h, true, probs, scale);
      probabilities_from_lse(probs, lse_p + (b * l.heads + h) * l.seq);
      // dP = dO·Vᵀ, then dS = P ⊙ (dP − D) with D_i = Σ_d dO_id·O_id (= Σ_j P_ij·dP_ij).
      gemm(do_h, false, v_h, true, dscores);
      const float* pp = probs.data<float>();
      float* dsp = dscores.data<float>();
      for (int64_t i = 0; i < l.seq; ++i) {
        const float* o_row = out_p + l.at(b, i, h);
        const float* do_row = dout_p + l.at(b, i, h);
        double row_dot = 0.0;
        for (int64_t d = 0; d < l.head_dim; ++d) row_dot += static_cast<double>(do_row[d]) * o_row[d];
        const float delta = static_cast<float>(row_dot);
        for (int64_t j = 0; j < l.seq; ++j)
          dsp[i * l.seq + j] = pp[i * l.seq + j] * (dsp[i * l.seq + j] - delta);
      }
      gemm(dscores, false, k_h, false, grad_h, scale);  // dQ = dS·K·scale
      scatter_head(grad_h, l, b, h, dq);
      gemm(dscores, true, q_h, false, grad_h, scale);  // dK = dSᵀ·Q·scale
      scatter_head(grad_h, l, b, h, dk);
      gemm(probs, true, do_h, false, grad_h);  // dV = Pᵀ·dO
      scatter_head(grad_h, l, b, h, dv);
    }
  }
}

}  // namespace engram::kernels::cpu
