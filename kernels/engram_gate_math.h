#pragma once
// The per-row formulas of the Engram gate (MODEL.md §4.3), run by both backends so the CPU reference
// and the CUDA kernel share one definition. The row dot products (<q̂, k̂>, Σ du·v) are the caller's,
// accumulated in double.
#include <cmath>

#include "kernels/dispatch.h"

namespace engram::kernels {

// Below this |s| the signed square root is clamped, so its gradient is zero there.
constexpr float kGateMinAbsScore = 1e-6f;

// s = <q̂, k̂>/√D, rounded to float once.
EG_HOST_DEVICE inline float gate_score(double dot, int64_t dim) {
  return static_cast<float>(dot * (1.0 / sqrt(static_cast<double>(dim))));
}

// α = sigmoid(sign(s)·sqrt(max(|s|, 1e-6))).
EG_HOST_DEVICE inline float gate_alpha(float s) {
  const float root = sqrtf(fmaxf(fabsf(s), kGateMinAbsScore));
  const float z = s > 0.0f ? root : (s < 0.0f ? -root : 0.0f);
  return 1.0f / (1.0f + expf(-z));
}

// ∂L/∂<q̂, k̂> from dα = Σ du·v. α = σ(z), z = sign(s)·sqrt(|s|) ⇒ dz/ds = 1/(2·sqrt(|s|)) where
// |s| > 1e-6, else 0; and ds/d<q̂, k̂> = 1/√D.
EG_HOST_DEVICE inline float gate_dot_grad(double dalpha, float alpha, float s, int64_t dim) {
  const float abs_s = fabsf(s);
  const double dz = dalpha * alpha * (1.0f - alpha);
  const double ds = abs_s > kGateMinAbsScore ? dz / (2.0 * sqrt(static_cast<double>(abs_s))) : 0.0;
  return static_cast<float>(ds * (1.0 / sqrt(static_cast<double>(dim))));
}

}  // namespace engram::kernels
