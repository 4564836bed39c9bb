#include "kernels/checks.h"

namespace engram::kernels::checks {

namespace {

void check_f32_like(const Tensor& t, const Tensor& like, const char* what) {
  check_dtype(t, DType::F32, what);
  check_shape(t, like.shape(), what);
}

}  // namespace

void rows_per_id(const Tensor& rows, const Tensor& ids, int64_t width, const char* what) {
  check_dtype(rows, DType::F32, what);
  EG_ASSERT(rows.numel() == ids.numel() * width, what, " ", rows.describe(), " needs ", ids.numel(), "·", width,
            " elements");
}

void table_rows_per_id(const Tensor& table, const Tensor& ids, const Tensor& rows, const char* kernel) {
  check_dtype(table, DType::F32, kernel);
  EG_ASSERT(table.ndim() == 2, kernel, ": table must be [R, C], got ", table.describe());
  rows_per_id(rows, ids, table.dim(1), kernel);
}

void id_outside_table(int64_t id, int64_t position, int64_t n_rows) {
  EG_FAIL("id ", id, " at position ", position, " is outside the table's ", n_rows, " rows [0, ", n_rows, ")");
}

GemmDims gemm_dims(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c) {
  const int64_t m = trans_a ? a.cols() : a.rows();
  const int64_t k = trans_a ? a.rows() : a.cols();
  const int64_t k_b = trans_b ? b.cols() : b.rows();
  const int64_t n = trans_b ? b.rows() : b.cols();
  EG_ASSERT(k == k_b && c.rows() == m && c.cols() == n, "gemm shapes: a ", shape_str(a.shape()),
            trans_a ? "^T" : "", " · b ", shape_str(b.shape()), trans_b ? "^T" : "", " -> c ",
            shape_str(c.shape()));
  return {m, k, n};
}

void rmsnorm_forward(const Tensor& x, const Tensor& g, const Tensor& y, const Tensor& rstd) {
  check_shape(g, {x.cols()}, "rmsnorm_forward g");
  check_shape(y, x.shape(), "rmsnorm_forward y");
  EG_ASSERT(rstd.numel() == x.rows(), "rmsnorm_forward: rstd ", shape_str(rstd.shape()), " for ", x.rows(),
            " rows");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, const Tensor& dx,
                      const Tensor& dg) {
  check_shape(dy, x.shape(), "rmsnorm_backward dy");
  check_shape(dx, x.shape(), "rmsnorm_backward dx");
  check_shape(g, {x.cols()}, "rmsnorm_backward g");
  check_shape(dg, {x.cols()}, "rmsnorm_backward dg");
  EG_ASSERT(rstd.numel() == x.rows(), "rmsnorm_backward: rstd ", shape_str(rstd.shape()), " for ", x.rows(),
            " rows");
}

int64_t cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor* dlogits) {
  check_dtype(targets, DType::I32, "cross_entropy targets");
  EG_ASSERT(logits.ndim() == 2, "cross_entropy: logits must be [N, V], got ", shape_str(logits.shape()));
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  EG_ASSERT(vocab > 0, "cross_entropy: empty vocabulary in logits ", shape_str(logits.shape()));
  check_shape(targets, {rows}, "cross_entropy targets");
  check_shape(losses, {rows}, "cross_entropy losses");
  if (dlogits != nullptr) check_shape(*dlogits, logits.shape(), "cross_entropy dlogits");
  return vocab;
}

void compress_ids(const Tensor& ids, const Tensor& compress, const Tensor& out) {
  check_dtype(ids, DType::I32, "compress_ids ids");
  check_dtype(compress, DType::I32, "compress_ids compress");
  check_dtype(out, DType::I32, "compress_ids out");
  check_shape(out, ids.shape(), "compress_ids out");
}

void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, const Tensor& rows) {
  check_dtype(ids_c, DType::I32, "ngram_hash ids_c");
  EG_ASSERT(ids_c.ndim() == 2, "ngram_hash ids_c must be [B, T], got ", ids_c.describe());
  EG_ASSERT(max_ngram >= 2 && heads >= 1, "ngram_hash: max_ngram ", max_ngram, ", heads ", heads);
  const int64_t n_heads = (max_ngram - 1) * heads;
  check_shape(multipliers, {max_ngram}, "ngram_hash multipliers");
  check_shape(primes, {n_heads}, "ngram_hash primes");
  check_shape(offsets, {n_heads}, "ngram_hash offsets");
  check_shape(rows, {ids_c.dim(0), ids_c.dim(1), n_heads}, "ngram_hash rows");
  EG_CHECK(pad_c >= 0, "ngram_hash: compressed pad id ", pad_c, " must be >= 0");
}

void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v) {
  check_dtype(param, DType::F32, "adamw_update param");
  check_f32_like(grad, param, "adamw_update grad");
  check_f32_like(m, param, "adamw_update m");
  check_f32_like(v, param, "adamw_update v");
}

void sparse_adam(const Tensor& table, const Tensor& rows, const Tensor& row_grads, const Tensor& m, const Tensor& v) {
  check_dtype(table, DType::F32, "sparse_adam_update table");
  EG_ASSERT(table.ndim() == 2, "sparse_adam_update table must be [R, C], got ", table.describe());
  check_f32_like(m, table, "sparse_adam_update m");
  check_f32_like(v, table, "sparse_adam_update v");
  check_dtype(rows, DType::I64, "sparse_adam_update rows");
  check_dtype(row_grads, DType::F32, "sparse_adam_update row_grads");
  check_shape(row_grads, {rows.numel(), table.dim(1)}, "sparse_adam_update row_grads");
}

}  // namespace engram::kernels::checks
