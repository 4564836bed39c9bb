#include "kernels/conv.h"

#include <algorithm>
#include <vector>

namespace engram::kernels::cpu {

namespace {

struct ConvDims {
  int64_t b, t, d, w;
};
ConvDims conv_dims(const Tensor& x, const Tensor& w, int dilation, const char* what) {
  check_dtype(x, DType::F32, what);
  check_dtype(w, DType::F32, what);
  EG_ASSERT(x.ndim() == 3, what, ": x must be [B, T, D], got ", x.describe());
  EG_ASSERT(w.ndim() == 2 && w.dim(1) == x.dim(2) && w.dim(0) >= 1, what, ": w ", w.describe(), " is not [W, ",
            x.dim(2), "]");
  EG_CHECK(dilation >= 1, what, ": dilation = ", dilation, " must be >= 1");
  return {x.dim(0), x.dim(1), x.dim(2), w.dim(0)};
}

}  // namespace

void causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, Tensor& y) {
  const auto [nb, nt, d, width] = conv_dims(x, w, dilation, "causal_conv_forward");
  check_shape(y, x.shape(), "causal_conv_forward y");
  check_dtype(y, DType::F32, "causal_conv_forward y");
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t t = 0; t < nt; ++t) {
      float* yt = yp + (b * nt + t) * d;
      std::fill(yt, yt + d, 0.0f);
      // Taps in ascending i; tap i looks (W−1−i)·dilation steps back.
      for (int64_t i = 0; i < width; ++i) {
        const int64_t src = t - (width - 1 - i) * dilation;
        if (src < 0) continue;
        const float* xs = xp + (b * nt + src) * d;
        const float* wi = wp + i * d;
        for (int64_t c = 0; c < d; ++c) yt[c] += wi[c] * xs[c];
      }
    }
  }
}

void causal_conv_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int dilation, Tensor& dx, Tensor& dw) {
  const auto [nb, nt, d, width] = conv_dims(x, w, dilation, "causal_conv_backward");
  check_shape(dy, x.shape(), "causal_conv_backward dy");
  check_shape(dx, x.shape(), "causal_conv_backward dx");
  check_shape(dw, w.shape(), "causal_conv_backward dw");
  check_dtype(dy, DType::F32, "causal_conv_backward dy");
  check_dtype(dx, DType::F32, "causal_conv_backward dx");
  check_dtype(dw, DType::F32, "causal_conv_backward dw");
  const float* gp = dy.data<float>();
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* dxp = dx.data<float>();
  // dw sums over all (b, t): accumulate in double, add to dw once.
  std::vector<double> dw_acc(width * d, 0.0);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t t = 0; t < nt; ++t) {
      // dx[t] gathers the outputs that read x[t]: y[t + (W−1−i)·dilation] through tap i.
      float* dxt = dxp + (b * nt + t) * d;
      std::fill(dxt, dxt + d, 0.0f);
      for (int64_t i = 0; i < width; ++i) {
        const int64_t out = t + (width - 1 - i) * dilation;
        if (out >= nt) continue;
        const float* g = gp + (b * nt + out) * d;
        const float* wi = wp + i * d;
        for (int64_t c = 0; c < d; ++c) dxt[c] += wi[c] * g[c];
      }
      const float* g = gp + (b * nt + t) * d;
      for (int64_t i = 0; i < width; ++i) {
        const int64_t src = t - (width - 1 - i) * dilation;
        if (src < 0) continue;
        const float* xs = xp + (b * nt + src) * d;
        double* acc = dw_acc.data() + i * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += static_cast<double>(g[c]) * xs[c];
      }
    }
  }
  float* dwp = dw.data<float>();
  for (int64_t i = 0; i < width * d; ++i) dwp[i] += static_cast<float>(dw_acc[i]);
}

}  // namespace engram::kernels::cpu
