#include "kernels/engram_gate.h"

#include <algorithm>
#include <cmath>

namespace engram::kernels::cpu {

namespace {

// Below this |s| the signed square root is clamped (MODEL.md §4.3), so its gradient is zero there.
constexpr float kMinAbsScore = 1e-6f;

void check_rows_f32(const Tensor& t, int64_t n, int64_t d, const char* what) {
  check_dtype(t, DType::F32, what);
  EG_ASSERT(t.rows() == n && t.cols() == d, what, " ", t.describe(), " is not [", n, ", ", d, "]");
}

void check_vector_f32(const Tensor& t, int64_t n, const char* what) {
  check_dtype(t, DType::F32, what);
  EG_ASSERT(t.numel() == n, what, " ", t.describe(), " needs ", n, " elements");
}

float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

}  // namespace

void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, Tensor& score, Tensor& alpha,
                         Tensor& u) {
  const int64_t n = qn.rows(), d = qn.cols();
  check_rows_f32(qn, n, d, "engram_gate_forward qn");
  check_rows_f32(kn, n, d, "engram_gate_forward kn");
  check_rows_f32(v, n, d, "engram_gate_forward v");
  check_rows_f32(u, n, d, "engram_gate_forward u");
  check_vector_f32(score, n, "engram_gate_forward score");
  check_vector_f32(alpha, n, "engram_gate_forward alpha");
  const float* q = qn.data<float>();
  const float* k = kn.data<float>();
  const float* vp = v.data<float>();
  float* sp = score.data<float>();
  float* ap = alpha.data<float>();
  float* up = u.data<float>();
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  for (int64_t r = 0; r < n; ++r) {
    const float* qr = q + r * d;
    const float* kr = k + r * d;
    double dot = 0.0;
    for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qr[c]) * kr[c];
    const float s = static_cast<float>(dot * inv_sqrt_d);
    const float root = std::sqrt(std::max(std::fabs(s), kMinAbsScore));
    const float a = sigmoid(s > 0.0f ? root : (s < 0.0f ? -root : 0.0f));
    sp[r] = s;
    ap[r] = a;
    const float* vr = vp + r * d;
    float* ur = up + r * d;
    for (int64_t c = 0; c < d; ++c) ur[c] = a * vr[c];
  }
}

void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v,
                          const Tensor& score, const Tensor& alpha, Tensor& dqn, Tensor& dkn, Tensor& dv) {
  const int64_t n = qn.rows(), d = qn.cols();
  check_rows_f32(du, n, d, "engram_gate_backward du");
  check_rows_f32(qn, n, d, "engram_gate_backward qn");
  check_rows_f32(kn, n, d, "engram_gate_backward kn");
  check_rows_f32(v, n, d, "engram_gate_backward v");
  check_rows_f32(dqn, n, d, "engram_gate_backward dqn");
  check_rows_f32(dkn, n, d, "engram_gate_backward dkn");
  check_rows_f32(dv, n, d, "engram_gate_backward dv");
  check_vector_f32(score, n, "engram_gate_backward score");
  check_vector_f32(alpha, n, "engram_gate_backward alpha");
  const float* g = du.data<float>();
  const float* q = qn.data<float>();
  const float* k = kn.data<float>();
  const float* vp = v.data<float>();
  const float* sp = score.data<float>();
  const float* ap = alpha.data<float>();
  float* dq = dqn.data<float>();
  float* dk = dkn.data<float>();
  float* dvp = dv.data<float>();
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  for (int64_t r = 0; r < n; ++r) {
    const float* gr = g + r * d;
    const float* vr = vp + r * d;
    const float a = ap[r];
    double dalpha = 0.0;
    for (int64_t c = 0; c < d; ++c) dalpha += static_cast<double>(gr[c]) * vr[c];
    // α = σ(z), z = sign(s)·sqrt(|s|) ⇒ dz/ds = 1/(2·sqrt(|s|)) where |s| > kMinAbsScore, else 0.
    const float abs_s = std::fabs(sp[r]);
    const double dz = dalpha * a * (1.0f - a);
    const double ds = abs_s > kMinAbsScore ? dz / (2.0 * std::sqrt(static_cast<double>(abs_s))) : 0.0;
    const float dsum = static_cast<float>(ds * inv_sqrt_d);  // ∂/∂<qn, kn>
    const float* qr = q + r * d;
    const float* kr = k + r * d;
    float* dqr = dq + r * d;
    float* dkr = dk + r * d;
    float* dvr = dvp + r * d;
    for (int64_t c = 0; c < d; ++c) {
      dqr[c] = dsum * kr[c];
      dkr[c] = dsum * qr[c];
      dvr[c] = a * gr[c];
    }
  }
}

}  // namespace engram::kernels::cpu
