#pragma once
// Argument checks shared by the CPU and CUDA versions of a kernel (internal to kernels/), so both
// reject the same calls with the same messages. Checks of values (ids, targets) stay with each
// backend: they read the data.
#include "runtime/tensor.h"

namespace engram::kernels::checks {

// Calls f(ids_pointer) with the ids typed as they are stored (i32 or i64).
template <class F>
void visit_ids(const Tensor& ids, const char* what, F&& f) {
  if (ids.dtype() == DType::I32) {
    f(ids.data<int32_t>());
  } else {
    check_dtype(ids, DType::I64, what);
    f(ids.data<int64_t>());
  }
}

// `rows` holds one row of `width` per id, of rows_dtype.
void rows_per_id(const Tensor& rows, const Tensor& ids, int64_t width, const char* what,
                 DType rows_dtype = DType::F32);
// table is [R, C] of table_dtype and `rows` holds one row of it per id (kernel names the call in messages).
void table_rows_per_id(const Tensor& table, const Tensor& ids, const Tensor& rows, const char* kernel,
                       DType rows_dtype = DType::F32, DType table_dtype = DType::F32);
// The error for an id outside a table's [0, n_rows).
[[noreturn]] void id_outside_table(int64_t id, int64_t position, int64_t n_rows);

struct GemmDims {
  int64_t m, k, n;  // C [m, n] = op(A) [m, k] · op(B) [k, n]
};
GemmDims gemm_dims(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c);
// copy_into_columns: src [N, C] and dst [N, W] of one dtype, first_column + C <= W.
void copy_into_columns(const Tensor& src, const Tensor& dst, int64_t first_column);
// gemm_plus's addend c and output d: both f32, one shape, the same tensor or apart.
void gemm_plus_sum(const Tensor& c, const Tensor& d);

struct ConvDims {
  int64_t b, t, d, w;  // x [b, t, d], w [w, d]
};
ConvDims causal_conv_forward(const Tensor& x, const Tensor& w, int dilation, const Tensor& y);
ConvDims causal_conv_backward(const Tensor& dy, const Tensor& x, const Tensor& w, int dilation, const Tensor& dx,
                              const Tensor& dw);

void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, const Tensor& score,
                         const Tensor& alpha, const Tensor& u);
void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v, const Tensor& score,
                          const Tensor& alpha, const Tensor& dqn, const Tensor& dkn, const Tensor& dv);

void rmsnorm_forward(const Tensor& x, const Tensor& g, const Tensor& y, const Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, const Tensor& dx,
                      const Tensor& dg, const Tensor& dx_residual);  // dx_residual may be undefined

// Returns the vocabulary size. dlogits may be null (forward only).
int64_t cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor* dlogits);

void compress_ids(const Tensor& ids, const Tensor& compress, const Tensor& out);
void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, const Tensor& rows);

// Sizes of causal attention over q, k, v (and dout) [B, T, H, d_h] in the dtype `operands`, out (and
// dq, dk, dv) of that shape in f32 (out and dv may be bf16 when `operands` is), and lse [B, H, T] (f32).
struct AttentionDims {
  int64_t batch, seq, heads, head_dim;
  // Offset of (b, t, h, 0) in a [B, T, H, d_h] tensor.
  int64_t at(int64_t b, int64_t t, int64_t h) const { return ((b * seq + t) * heads + h) * head_dim; }
};
AttentionDims attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                const Tensor& lse, DType operands);
AttentionDims attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& out, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                                 const Tensor& dv, DType operands);

// RoPE (kernels/rope.h): x [B, T, H, d_h] f32 with d_h even, tables [>= T, d_h/2], out of x's shape
// in `out_dtype`; returns the half head dim.
int64_t rope_apply(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& out, DType out_dtype);
// The same with out [B·T, W] in `out_dtype` taking H·d_h columns from first_column.
int64_t rope_apply_into_columns(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& out,
                                int64_t first_column, DType out_dtype);

// Router (kernels/router.h): shapes and dtypes; the expert ids in topk_idx are checked by each backend.
void router_scores(const Tensor& logits, const Tensor& scores);
void router_scores_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dlogits);
void topk_select(const Tensor& scores, const Tensor& bias, int k, const Tensor& topk_idx, const Tensor& topk_w);
void topk_weights_backward(const Tensor& d_topk_w, const Tensor& scores, const Tensor& topk_idx,
                           const Tensor& dscores);
void moe_aux_loss(const Tensor& scores, const Tensor& topk_idx, const Tensor& dscores);
void router_z_loss(const Tensor& logits, const Tensor& dlogits);
// The error for a topk_idx entry outside [0, n_experts) (kernel names the call).
[[noreturn]] void expert_outside(int64_t expert, int64_t n_experts, const char* kernel);

// Permutation (kernels/permute.h). The combine checks return (N, K, D); the positions' values are
// checked by each backend. expert_out_dtype and d_expert_out_dtype: F32, or BF16 where the CUDA
// kernels read or write the dtype of the expert products.
void sort_by_expert(const Tensor& topk_idx, int n_experts);
// The error for assignment a naming an expert outside [0, n_experts).
[[noreturn]] void assignment_outside_experts(int64_t assignment, int64_t expert, int n_experts);
struct CombineDims {
  int64_t n, k, d;
};
CombineDims combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w,
                                   const Tensor& y, DType expert_out_dtype = DType::F32);
CombineDims combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                            const Tensor& topk_w, const Tensor& d_expert_out, const Tensor& d_topk_w,
                                            DType d_expert_out_dtype = DType::F32, DType expert_out_dtype = DType::F32);
// The error for a position outside [0, n_assignments) (kernel names the call).
[[noreturn]] void position_outside(int64_t position, int64_t n_assignments, const char* kernel);

void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v);
void sparse_adam(const Tensor& table, const Tensor& rows, const Tensor& row_grads, const Tensor& m, const Tensor& v);

}  // namespace engram::kernels::checks
