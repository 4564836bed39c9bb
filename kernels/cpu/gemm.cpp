// Matrix products on the CPU through OpenBLAS sgemm (row-major).
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

namespace engram::kernels::cpu {

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  check_dtype(a, DType::F32, "gemm a");
  check_dtype(b, DType::F32, "gemm b");
  check_dtype(c, DType::F32, "gemm c");
  const int64_t m = trans_a ? a.cols() : a.rows();
  const int64_t k = trans_a ? a.rows() : a.cols();
  const int64_t k_b = trans_b ? b.cols() : b.rows();
  const int64_t n = trans_b ? b.rows() : b.cols();
  EG_ASSERT(k == k_b && c.rows() == m && c.cols() == n, "gemm shapes: a ", shape_str(a.shape()),
            trans_a ? "^T" : "", " · b ", shape_str(b.shape()), trans_b ? "^T" : "", " -> c ",
            shape_str(c.shape()));
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

namespace {

// Checks that offsets split `rows` rows into b's G groups: G+1 entries, from 0 to rows, non-decreasing.
void check_group_offsets(const std::vector<int64_t>& offsets, const Tensor& b, int64_t rows,
                         const char* what) {
  EG_ASSERT(b.ndim() == 3, what, ": weights must be [G, r, s], got ", shape_str(b.shape()));
  const int64_t groups = b.dim(0);
  EG_ASSERT(static_cast<int64_t>(offsets.size()) == groups + 1, what, ": ", offsets.size(), " offsets for ",
            groups, " groups");
  EG_ASSERT(offsets.front() == 0 && offsets.back() == rows, what, ": offsets must run from 0 to ", rows);
  for (int64_t g = 0; g < groups; ++g)
    EG_ASSERT(offsets[g] <= offsets[g + 1], what, ": offsets decrease at group ", g);
}

// Rows [begin, end) of t read as a matrix.
Tensor row_block(const Tensor& t, int64_t begin, int64_t end) {
  return t.view({t.rows(), t.cols()}).slice(begin, end);
}

// Group g of stacked weights [G, r, s] as an [r, s] matrix sharing storage.
Tensor group_matrix(const Tensor& b, int64_t g) { return b.slice(g, g + 1).view({b.dim(1), b.dim(2)}); }

}  // namespace

void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c,
                  const std::vector<int64_t>& offsets) {
  check_group_offsets(offsets, b, a.rows(), "grouped_gemm");
  EG_ASSERT(c.rows() == a.rows(), "grouped_gemm: a ", shape_str(a.shape()), " and c ", shape_str(c.shape()),
            " differ in rows");
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(offsets.size()); ++g) {
    if (offsets[g] == offsets[g + 1]) continue;
    Tensor c_g = row_block(c, offsets[g], offsets[g + 1]);
    gemm(row_block(a, offsets[g], offsets[g + 1]), false, group_matrix(b, g), trans_b, c_g);
  }
}

void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets) {
  check_group_offsets(offsets, db, a.rows(), "grouped_gemm_wgrad");
  EG_ASSERT(dc.rows() == a.rows(), "grouped_gemm_wgrad: dc ", shape_str(dc.shape()), " and a ",
            shape_str(a.shape()), " differ in rows");
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(offsets.size()); ++g) {
    if (offsets[g] == offsets[g + 1]) continue;
    Tensor db_g = group_matrix(db, g);
    gemm(row_block(dc, offsets[g], offsets[g + 1]), true, row_block(a, offsets[g], offsets[g + 1]), false,
         db_g, 1.0f, 1.0f);
  }
}

}  // namespace engram::kernels::cpu
