// The Engram gate on the CPU, the reference for kernels/engram_gate.h. Row dot products accumulate
// in double; the scalar formulas are kernels/engram_gate_math.h, shared with the CUDA kernel.
#include "kernels/engram_gate.h"

#include "kernels/checks.h"
#include "kernels/engram_gate_math.h"

namespace engram::kernels::cpu {

void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, Tensor& score, Tensor& alpha,
                         Tensor& u) {
  checks::engram_gate_forward(qn, kn, v, score, alpha, u);
  const int64_t n = qn.rows(), d = qn.cols();
  const float* q = qn.data<float>();
  const float* k = kn.data<float>();
  const float* vp = v.data<float>();
  float* sp = score.data<float>();
  float* ap = alpha.data<float>();
  float* up = u.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const float* qr = q + r * d;
    const float* kr = k + r * d;
    double dot = 0.0;
    for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(qr[c]) * kr[c];
    const float s = gate_score(dot, d);
    const float a = gate_alpha(s);
    sp[r] = s;
    ap[r] = a;
    const float* vr = vp + r * d;
    float* ur = up + r * d;
    for (int64_t c = 0; c < d; ++c) ur[c] = a * vr[c];
  }
}

void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v,
                          const Tensor& score, const Tensor& alpha, Tensor& dqn, Tensor& dkn, Tensor& dv) {
  checks::engram_gate_backward(du, qn, kn, v, score, alpha, dqn, dkn, dv);
  const int64_t n = qn.rows(), d = qn.cols();
  const float* g = du.data<float>();
  const float* q = qn.data<float>();
  const float* k = kn.data<float>();
  const float* vp = v.data<float>();
  const float* sp = score.data<float>();
  const float* ap = alpha.data<float>();
  float* dq = dqn.data<float>();
  float* dk = dkn.data<float>();
  float* dvp = dv.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const float* gr = g + r * d;
    const float* vr = vp + r * d;
    const float a = ap[r];
    double dalpha = 0.0;
    for (int64_t c = 0; c < d; ++c) dalpha += static_cast<double>(gr[c]) * vr[c];
    const float dsum = gate_dot_grad(dalpha, a, sp[r], d);  // ∂L/∂<qn, kn>
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
