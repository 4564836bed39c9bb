// The depthwise causal dilated convolution on the CPU, the reference for kernels/conv.h.
#include "kernels/conv.h"

#include <algorithm>
#include <vector>

#include "kernels/checks.h"

namespace engram::kernels::cpu {

void causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, Tensor& y) {
  const auto [nb, nt, d, width] = checks::causal_conv_forward(x, w, dilation, y);
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
  const auto [nb, nt, d, width] = checks::causal_conv_backward(dy, x, w, dilation, dx, dw);
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
