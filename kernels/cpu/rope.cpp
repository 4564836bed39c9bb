// Rotary position embedding on the CPU (rotate-half convention, MODEL.md §2).
#include "kernels/rope.h"

#include <cmath>

#include "kernels/checks.h"

namespace engram::kernels {

RopeTables make_rope_tables(int64_t seq_len, int64_t head_dim, double theta) {
  EG_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be positive and even, got ", head_dim);
  EG_CHECK(seq_len >= 0, "rope: seq_len must be non-negative, got ", seq_len);
  EG_CHECK(theta > 0.0, "rope: rope_theta must be positive, got ", theta);
  const int64_t half = head_dim / 2;
  RopeTables tables{Tensor::empty({seq_len, half}), Tensor::empty({seq_len, half})};
  float* cos_p = tables.cos.data<float>();
  float* sin_p = tables.sin.data<float>();
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    for (int64_t pos = 0; pos < seq_len; ++pos) {
      const double angle = static_cast<double>(pos) * freq;
      cos_p[pos * half + i] = static_cast<float>(std::cos(angle));
      sin_p[pos * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return tables;
}

namespace cpu {

namespace {

// Rotates x [B, T, H, d_h] into rows of `width` values starting at `first_column` of out: x's own
// shape when width = H·d_h and first_column = 0. Tables may be longer than the sequence (made once
// for the longest one): rows 0..T−1 are used. Each pair is read before it is written, so out may be x.
void rotate(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, int64_t half, float* op, int64_t width,
            int64_t first_column) {
  const int64_t batch = x.dim(0), seq = x.dim(1), heads = x.dim(2), head_dim = x.dim(3);
  const float* cos_p = cos.data<float>();
  const float* sin_p = sin.data<float>();
  const float sign = inverse ? -1.0f : 1.0f;  // rotating by −angle: cos unchanged, sin negated
  const float* xp = x.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) {
      const float* c = cos_p + t * half;
      const float* s = sin_p + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t lo = ((b * seq + t) * heads + h) * head_dim, hi = lo + half;
        float* o = op + (b * seq + t) * width + first_column + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = xp[lo + i], z = xp[hi + i], sn = sign * s[i];
          o[i] = a * c[i] - z * sn;
          o[half + i] = a * sn + z * c[i];
        }
      }
    }
  }
}

}  // namespace

void rope_apply_to(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out) {
  const int64_t half = checks::rope_apply(x, cos, sin, out, DType::F32);
  rotate(x, cos, sin, inverse, half, out.data<float>(), x.dim(2) * x.dim(3), 0);
}

void rope_apply_into_columns(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse, Tensor& out,
                             int64_t first_column) {
  const int64_t half = checks::rope_apply_into_columns(x, cos, sin, out, first_column, DType::F32);
  rotate(x, cos, sin, inverse, half, out.data<float>(), out.dim(1), first_column);
}

}  // namespace cpu
}  // namespace engram::kernels
