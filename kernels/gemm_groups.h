#pragma once
// Grouped GEMMs as one GEMM per group on row blocks that share storage (internal to kernels/): both
// backends run these loops with their own gemm.
#include <vector>

#include "runtime/tensor.h"

namespace engram::kernels::gemm_groups {

// Checks that offsets split `rows` rows into b's G groups: G+1 entries, from 0 to rows, non-decreasing.
inline void check_offsets(const std::vector<int64_t>& offsets, const Tensor& b, int64_t rows, const char* what) {
  EG_ASSERT(b.ndim() == 3, what, ": weights must be [G, r, s], got ", shape_str(b.shape()));
  const int64_t groups = b.dim(0);
  EG_ASSERT(static_cast<int64_t>(offsets.size()) == groups + 1, what, ": ", offsets.size(), " offsets for ",
            groups, " groups");
  EG_ASSERT(offsets.front() == 0 && offsets.back() == rows, what, ": offsets must run from 0 to ", rows);
  for (int64_t g = 0; g < groups; ++g)
    EG_ASSERT(offsets[g] <= offsets[g + 1], what, ": offsets decrease at group ", g);
}

// Rows [begin, end) of t read as a matrix.
inline Tensor row_block(const Tensor& t, int64_t begin, int64_t end) {
  return t.view({t.rows(), t.cols()}).slice(begin, end);
}

// Group g of stacked weights [G, r, s] as an [r, s] matrix sharing storage.
inline Tensor group_matrix(const Tensor& b, int64_t g) { return b.slice(g, g + 1).view({b.dim(1), b.dim(2)}); }

// c_g = a_g · op(b[g]) + beta·c_g for every non-empty group; gemm(a, trans_a, b, trans_b, c, alpha, beta).
template <class Gemm>
void grouped_gemm(Gemm&& gemm, const Tensor& a, const Tensor& b, bool trans_b, Tensor& c,
                  const std::vector<int64_t>& offsets, float beta) {
  check_offsets(offsets, b, a.rows(), "grouped_gemm");
  EG_ASSERT(c.rows() == a.rows(), "grouped_gemm: a ", shape_str(a.shape()), " and c ", shape_str(c.shape()),
            " differ in rows");
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(offsets.size()); ++g) {
    if (offsets[g] == offsets[g + 1]) continue;
    Tensor c_g = row_block(c, offsets[g], offsets[g + 1]);
    gemm(row_block(a, offsets[g], offsets[g + 1]), false, group_matrix(b, g), trans_b, c_g, 1.0f, beta);
  }
}

// c_g = a_g · op(b[g]) + a2_g · op(b2[g]): the two products one after the other (a2 and b2 shaped
// like a and b).
template <class Gemm>
void grouped_gemm_pair(Gemm&& gemm, const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2,
                       bool trans_b, Tensor& c, const std::vector<int64_t>& offsets) {
  EG_ASSERT(a2.shape() == a.shape() && b2.shape() == b.shape(), "grouped_gemm_pair: a ", shape_str(a.shape()),
            ", b ", shape_str(b.shape()), " and a2 ", shape_str(a2.shape()), ", b2 ", shape_str(b2.shape()),
            " must match");
  grouped_gemm(gemm, a, b, trans_b, c, offsets, 0.0f);
  grouped_gemm(gemm, a2, b2, trans_b, c, offsets, 1.0f);
}

// db[g] += dc_g^T · a_g for every non-empty group.
template <class Gemm>
void grouped_gemm_wgrad(Gemm&& gemm, const Tensor& dc, const Tensor& a, Tensor& db,
                        const std::vector<int64_t>& offsets) {
  check_offsets(offsets, db, a.rows(), "grouped_gemm_wgrad");
  EG_ASSERT(dc.rows() == a.rows(), "grouped_gemm_wgrad: dc ", shape_str(dc.shape()), " and a ",
            shape_str(a.shape()), " differ in rows");
  for (int64_t g = 0; g + 1 < static_cast<int64_t>(offsets.size()); ++g) {
    if (offsets[g] == offsets[g + 1]) continue;
    Tensor db_g = group_matrix(db, g);
    gemm(row_block(dc, offsets[g], offsets[g + 1]), true, row_block(a, offsets[g], offsets[g + 1]), false, db_g,
         1.0f, 1.0f);
  }
}

}  // namespace engram::kernels::gemm_groups
