#include "kernels/checks.h"

#include <initializer_list>
#include <string>

namespace engram::kernels::checks {

namespace {

void check_like(const Tensor& t, DType dtype, const Tensor& like, const char* what) {
  check_dtype(t, dtype, what);
  check_shape(t, like.shape(), what);
}

void check_f32_like(const Tensor& t, const Tensor& like, const char* what) { check_like(t, DType::F32, like, what); }

ConvDims conv_dims(const Tensor& x, const Tensor& w, int dilation, const char* what) {
  check_dtype(x, DType::F32, what);
  check_dtype(w, DType::F32, what);
  EG_ASSERT(x.ndim() == 3, what, ": x must be [B, T, D], got ", x.describe());
  EG_ASSERT(w.ndim() == 2 && w.dim(1) == x.dim(2) && w.dim(0) >= 1, what, ": w ", w.describe(), " is not [W, ",
            x.dim(2), "]");
  EG_CHECK(dilation >= 1, what, ": dilation = ", dilation, " must be >= 1");
  return {x.dim(0), x.dim(1), x.dim(2), w.dim(0)};
}

struct Named {
  const Tensor& tensor;
  const char* name;
};

// Each of `rows` is f32 [N, D] and each of `per_row` f32 with N elements (N, D those of qn); messages
// name the argument as "<kernel> <name>".
void gate_arguments(const char* kernel, const Tensor& qn, std::initializer_list<Named> rows,
                    std::initializer_list<Named> per_row) {
  const int64_t n = qn.rows(), d = qn.cols();
  for (const Named& arg : rows) {
    const std::string what = std::string(kernel) + " " + arg.name;
    check_dtype(arg.tensor, DType::F32, what.c_str());
    EG_ASSERT(arg.tensor.rows() == n && arg.tensor.cols() == d, what, " ", arg.tensor.describe(), " is not [", n,
              ", ", d, "]");
  }
  for (const Named& arg : per_row) {
    const std::string what = std::string(kernel) + " " + arg.name;
    check_dtype(arg.tensor, DType::F32, what.c_str());
    EG_ASSERT(arg.tensor.numel() == n, what, " ", arg.tensor.describe(), " needs ", n, " elements");
  }
}

AttentionDims attention_tensors(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                const Tensor& lse, DType operands, const char* kernel) {
  check_dtype(q, operands, "attention q");
  EG_ASSERT(q.ndim() == 4 && q.dim(3) >= 1, kernel, ": q must be [B, T, H, d_h] with d_h >= 1, got ",
            shape_str(q.shape()));
  check_like(k, operands, q, "attention k");
  check_like(v, operands, q, "attention v");
  // Where the operands are bf16 (the CUDA tensor-core path), o may be written in bf16 too.
  check_like(out, operands == DType::BF16 && out.dtype() == DType::BF16 ? DType::BF16 : DType::F32, q,
             "attention out");
  check_dtype(lse, DType::F32, "attention lse");
  check_shape(lse, {q.dim(0), q.dim(2), q.dim(1)}, "attention lse");
  return {q.dim(0), q.dim(1), q.dim(2), q.dim(3)};
}

void check_f32_matrix(const Tensor& t, int64_t rows, int64_t cols, const char* what) {
  check_dtype(t, DType::F32, what);
  EG_ASSERT(t.rows() == rows && t.cols() == cols, what, " ", t.describe(), " is not [", rows, ", ", cols, "]");
}

// topk_idx is i32 [n, k] with 1 <= k <= n_experts.
void check_topk_shape(const Tensor& topk_idx, int64_t n, int64_t n_experts, const char* what) {
  check_dtype(topk_idx, DType::I32, what);
  EG_ASSERT(topk_idx.rows() == n && topk_idx.cols() >= 1 && topk_idx.cols() <= n_experts, what, " ",
            topk_idx.describe(), " is not [", n, ", k <= ", n_experts, "]");
}

// The shapes combine and its backward share; returns (N, K, D).
// n tokens, each of K assignments: topk_w's columns when it is defined (it must be [N, K] f32), else
// position's size over N.
CombineDims combine_dims(const Tensor& expert_out, DType expert_out_dtype, const Tensor& position, const Tensor& topk_w,
                         int64_t n, const char* what) {
  check_dtype(expert_out, expert_out_dtype, what);
  check_dtype(position, DType::I32, what);
  const int64_t k = topk_w.defined() ? topk_w.cols() : n > 0 ? position.numel() / n : 0, d = expert_out.cols();
  EG_ASSERT(position.numel() == n * k && expert_out.rows() == n * k, what, ": position ", position.describe(),
            " and expert_out ", expert_out.describe(), " need N·K rows for N = ", n, " tokens");
  if (topk_w.defined()) {
    check_dtype(topk_w, DType::F32, what);
    EG_ASSERT(topk_w.rows() == n && topk_w.cols() == k, what, ": topk_w ", topk_w.describe(), " is not [", n, ", ", k,
              "]");
  }
  return {n, k, d};
}

}  // namespace

void rows_per_id(const Tensor& rows, const Tensor& ids, int64_t width, const char* what, DType rows_dtype) {
  check_dtype(rows, rows_dtype, what);
  EG_ASSERT(rows.numel() == ids.numel() * width, what, " ", rows.describe(), " needs ", ids.numel(), "·", width,
            " elements");
}

void table_rows_per_id(const Tensor& table, const Tensor& ids, const Tensor& rows, const char* kernel,
                       DType rows_dtype, DType table_dtype) {
  check_dtype(table, table_dtype, kernel);
  EG_ASSERT(table.ndim() == 2, kernel, ": table must be [R, C], got ", table.describe());
  rows_per_id(rows, ids, table.dim(1), kernel, rows_dtype);
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

void copy_into_columns(const Tensor& src, const Tensor& dst, int64_t first_column) {
  check_dtype(src, dst.dtype(), "copy_into_columns src");
  EG_ASSERT(src.ndim() == 2 && dst.ndim() == 2 && src.dim(0) == dst.dim(0) && first_column >= 0 &&
                first_column + src.dim(1) <= dst.dim(1),
            "copy_into_columns: src ", src.describe(), " does not fit dst ", dst.describe(), " from column ",
            first_column);
}

void gemm_plus_sum(const Tensor& c, const Tensor& d) {
  check_dtype(c, DType::F32, "gemm_plus c");
  check_dtype(d, DType::F32, "gemm_plus d");
  check_shape(c, d.shape(), "gemm_plus c");
  const auto* c_bytes = static_cast<const char*>(c.raw());
  const auto* d_bytes = static_cast<const char*>(d.raw());
  const bool overlap = c_bytes < d_bytes + d.nbytes() && d_bytes < c_bytes + c.nbytes();
  EG_ASSERT(c_bytes == d_bytes || !overlap, "gemm_plus: c ", c.describe(), " and d ", d.describe(),
            " overlap without being one tensor");
}

ConvDims causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, const Tensor& y) {
  const ConvDims dims = conv_dims(x, w, dilation, "causal_conv_forward");
  check_shape(y, x.shape(), "causal_conv_forward y");
  check_dtype(y, DType::F32, "causal_conv_forward y");
  return dims;
}

ConvDims causal_conv_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int dilation, const Tensor& dx,
                              const Tensor& dw) {
  const ConvDims dims = conv_dims(x, w, dilation, "causal_conv_backward");
  check_shape(dy, x.shape(), "causal_conv_backward dy");
  check_shape(dx, x.shape(), "causal_conv_backward dx");
  check_shape(dw, w.shape(), "causal_conv_backward dw");
  check_dtype(dy, DType::F32, "causal_conv_backward dy");
  check_dtype(dx, DType::F32, "causal_conv_backward dx");
  check_dtype(dw, DType::F32, "causal_conv_backward dw");
  return dims;
}

void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, const Tensor& score,
                         const Tensor& alpha, const Tensor& u) {
  gate_arguments("engram_gate_forward", qn, {{qn, "qn"}, {kn, "kn"}, {v, "v"}, {u, "u"}},
                 {{score, "score"}, {alpha, "alpha"}});
}

void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v, const Tensor& score,
                          const Tensor& alpha, const Tensor& dqn, const Tensor& dkn, const Tensor& dv) {
  gate_arguments("engram_gate_backward", qn,
                 {{du, "du"}, {qn, "qn"}, {kn, "kn"}, {v, "v"}, {dqn, "dqn"}, {dkn, "dkn"}, {dv, "dv"}},
                 {{score, "score"}, {alpha, "alpha"}});
}

void rmsnorm_forward(const Tensor& x, const Tensor& g, const Tensor& y, const Tensor& rstd) {
  check_shape(g, {x.cols()}, "rmsnorm_forward g");
  check_shape(y, x.shape(), "rmsnorm_forward y");
  EG_ASSERT(rstd.numel() == x.rows(), "rmsnorm_forward: rstd ", shape_str(rstd.shape()), " for ", x.rows(),
            " rows");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, const Tensor& dx,
                      const Tensor& dg, const Tensor& dx_residual) {
  check_shape(dy, x.shape(), "rmsnorm_backward dy");
  check_shape(dx, x.shape(), "rmsnorm_backward dx");
  if (dx_residual.defined()) check_shape(dx_residual, x.shape(), "rmsnorm_backward dx_residual");
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

AttentionDims attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                const Tensor& lse, DType operands) {
  return attention_tensors(q, k, v, out, lse, operands, "attention_forward");
}

AttentionDims attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& out, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                 const Tensor& dv, DType operands) {
  const AttentionDims dims = attention_tensors(q, k, v, out, lse, operands, "attention_backward");
  check_like(dout, operands, q, "attention dout");
  check_like(dq, DType::F32, q, "attention dq");
  check_like(dk, DType::F32, q, "attention dk");
  check_like(dv, operands == DType::BF16 && dv.dtype() == DType::BF16 ? DType::BF16 : DType::F32, q,
             "attention dv");
  return dims;
}
int64_t rope_apply(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& out, DType out_dtype) {
  check_dtype(x, DType::F32, "rope_apply x");
  EG_ASSERT(x.ndim() == 4, "rope_apply: x must be [B, T, H, d_h], got ", shape_str(x.shape()));
  const int64_t seq = x.dim(1), half = x.dim(3) / 2;
  EG_ASSERT(x.dim(3) % 2 == 0, "rope_apply: odd head_dim in ", shape_str(x.shape()));
  EG_ASSERT(cos.ndim() == 2 && cos.dim(0) >= seq && cos.dim(1) == half && sin.shape() == cos.shape(),
            "rope_apply: tables cos ", shape_str(cos.shape()), ", sin ", shape_str(sin.shape()), " for x ",
            shape_str(x.shape()));
  check_like(out, out_dtype, x, "rope_apply out");
  return half;
}

int64_t rope_apply_into_columns(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& out,
                                int64_t first_column, DType out_dtype) {
  // x and the tables as rope_apply checks them (x itself standing for an out of its shape).
  const int64_t half = rope_apply(x, cos, sin, x, DType::F32), width = x.dim(2) * x.dim(3);
  check_dtype(out, out_dtype, "rope_apply_into_columns out");
  EG_ASSERT(
      out.ndim() == 2 && out.dim(0) == x.dim(0) * x.dim(1) && first_column >= 0 && first_column + width <= out.dim(1),
      "rope_apply_into_columns: out ", out.describe(), " has no columns [", first_column, ", ", first_column + width,
      ") for the rows of x ", shape_str(x.shape()));
  return half;
}

void router_scores(const Tensor& logits, const Tensor& scores) {
  const int64_t n = logits.rows(), e = logits.cols();
  check_f32_matrix(logits, n, e, "router_scores logits");
  check_f32_matrix(scores, n, e, "router_scores scores");
}

void router_scores_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dlogits) {
  const int64_t n = scores.rows(), e = scores.cols();
  check_f32_matrix(scores, n, e, "router_scores_backward scores");
  check_f32_matrix(dscores, n, e, "router_scores_backward dscores");
  check_f32_matrix(dlogits, n, e, "router_scores_backward dlogits");
}

void topk_select(const Tensor& scores, const Tensor& bias, int k, const Tensor& topk_idx, const Tensor& topk_w) {
  const int64_t n = scores.rows(), e = scores.cols();
  check_f32_matrix(scores, n, e, "topk_select scores");
  check_shape(bias, {e}, "topk_select bias");
  check_dtype(bias, DType::F32, "topk_select bias");
  EG_CHECK(k >= 1 && k <= e, "topk_select: k = ", k, " must be in [1, n_experts = ", e, "]");
  check_dtype(topk_idx, DType::I32, "topk_select topk_idx");
  EG_ASSERT(topk_idx.rows() == n && topk_idx.cols() == k, "topk_select topk_idx ", topk_idx.describe(),
            " is not [", n, ", ", k, "]");
  check_f32_matrix(topk_w, n, k, "topk_select topk_w");
}

void topk_weights_backward(const Tensor& d_topk_w, const Tensor& scores, const Tensor& topk_idx,
                           const Tensor& dscores) {
  const int64_t n = scores.rows(), e = scores.cols();
  check_f32_matrix(scores, n, e, "topk_weights_backward scores");
  check_f32_matrix(dscores, n, e, "topk_weights_backward dscores");
  check_topk_shape(topk_idx, n, e, "topk_weights_backward topk_idx");
  check_f32_matrix(d_topk_w, n, topk_idx.cols(), "topk_weights_backward d_topk_w");
}

void moe_aux_loss(const Tensor& scores, const Tensor& topk_idx, const Tensor& dscores) {
  const int64_t n = scores.rows(), e = scores.cols();
  check_f32_matrix(scores, n, e, "moe_aux_loss scores");
  check_f32_matrix(dscores, n, e, "moe_aux_loss dscores");
  check_topk_shape(topk_idx, n, e, "moe_aux_loss topk_idx");
}

void router_z_loss(const Tensor& logits, const Tensor& dlogits) {
  const int64_t n = logits.rows(), e = logits.cols();
  check_f32_matrix(logits, n, e, "router_z_loss logits");
  check_f32_matrix(dlogits, n, e, "router_z_loss dlogits");
}

void expert_outside(int64_t expert, int64_t n_experts, const char* kernel) {
  // An internal error, as EG_ASSERT reports it: the ids come from topk_select.
  detail::throw_error(__FILE__, __LINE__,
                      detail::concat("internal error: ", kernel, " topk_idx holds expert ", expert, " outside [0, ",
                                     n_experts, ")"),
                      true);
}

void sort_by_expert(const Tensor& topk_idx, int n_experts) {
  check_dtype(topk_idx, DType::I32, "sort_by_expert topk_idx");
  EG_CHECK(n_experts >= 1, "sort_by_expert: n_experts = ", n_experts, " must be >= 1");
}

void assignment_outside_experts(int64_t assignment, int64_t expert, int n_experts) {
  EG_FAIL("sort_by_expert: assignment ", assignment, " names expert ", expert, ", outside [0, ", n_experts, ")");
}

CombineDims combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w,
                                   const Tensor& y, DType expert_out_dtype) {
  check_dtype(y, DType::F32, "combine_expert_outputs y");
  const CombineDims dims =
      combine_dims(expert_out, expert_out_dtype, position, topk_w, y.rows(), "combine_expert_outputs");
  EG_ASSERT(y.cols() == dims.d, "combine_expert_outputs y ", y.describe(), " is not [", dims.n, ", ", dims.d, "]");
  return dims;
}

CombineDims combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                            const Tensor& topk_w, const Tensor& d_expert_out, const Tensor& d_topk_w,
                                            DType d_expert_out_dtype, DType expert_out_dtype) {
  EG_ASSERT(topk_w.defined(), "combine_expert_outputs_backward: topk_w is undefined");
  const CombineDims dims =
      combine_dims(expert_out, expert_out_dtype, position, topk_w, topk_w.rows(), "combine_expert_outputs_backward");
  check_dtype(dy, DType::F32, "combine_expert_outputs_backward dy");
  EG_ASSERT(dy.rows() == dims.n && dy.cols() == dims.d, "combine_expert_outputs_backward dy ", dy.describe(),
            " is not [", dims.n, ", ", dims.d, "]");
  check_shape(d_expert_out, expert_out.shape(), "combine_expert_outputs_backward d_expert_out");
  check_dtype(d_expert_out, d_expert_out_dtype, "combine_expert_outputs_backward d_expert_out");
  check_shape(d_topk_w, topk_w.shape(), "combine_expert_outputs_backward d_topk_w");
  check_dtype(d_topk_w, DType::F32, "combine_expert_outputs_backward d_topk_w");
  return dims;
}

void position_outside(int64_t position, int64_t n_assignments, const char* kernel) {
  // An internal error, as EG_ASSERT reports it: the positions come from sort_by_expert.
  detail::throw_error(__FILE__, __LINE__,
                      detail::concat("internal error: ", kernel, ": position ", position, " outside [0, ",
                                     n_assignments, ")"),
                      true);
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
