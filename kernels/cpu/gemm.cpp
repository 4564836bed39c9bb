// Matrix products on the CPU through OpenBLAS sgemm (row-major).
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

#include "kernels/checks.h"
#include "kernels/gemm_groups.h"

namespace engram::kernels::cpu {

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  check_dtype(a, DType::F32, "gemm a");
  check_dtype(b, DType::F32, "gemm b");
  check_dtype(c, DType::F32, "gemm c");
  const auto [m, k, n] = checks::gemm_dims(a, trans_a, b, trans_b, c);
  if (m == 0 || n == 0) return;
  float* c_data = c.data<float>();
  if (k == 0) {
    // Nothing to multiply, and BLAS rejects leading dimensions of 0: C = beta·C (0 overwrites NaN).
    if (beta == 0.0f) {
      std::fill(c_data, c_data + m * n, 0.0f);
    } else {
      for (int64_t i = 0; i < m * n; ++i) c_data[i] *= beta;
    }
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha,
              a.data<float>(), static_cast<blasint>(a.cols()), b.data<float>(),
              static_cast<blasint>(b.cols()), beta, c_data, static_cast<blasint>(n));
}

void gemm_plus(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, Tensor& d) {
  checks::gemm_dims(a, trans_a, b, trans_b, d);  // before d is written
  checks::gemm_plus_sum(c, d);
  if (c.raw() != d.raw()) d.copy_from(c);
  gemm(a, trans_a, b, trans_b, d, 1.0f, 1.0f);
}

void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                  float beta) {
  gemm_groups::grouped_gemm(gemm, a, b, trans_b, c, offsets, beta);
}

void grouped_gemm_pair(const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2, bool trans_b, Tensor& c,
                       const std::vector<int64_t>& offsets) {
  gemm_groups::grouped_gemm_pair(gemm, a, b, a2, b2, trans_b, c, offsets);
}

void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets) {
  gemm_groups::grouped_gemm_wgrad(gemm, dc, a, db, offsets);
}

void gemm_float32(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  gemm(a, trans_a, b, trans_b, c, alpha, beta);
}

Tensor matmul_operand(const Tensor& x) { return x; }

}  // namespace engram::kernels::cpu
