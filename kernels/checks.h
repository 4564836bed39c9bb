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

// `rows` holds one f32 row of `width` per id.
void rows_per_id(const Tensor& rows, const Tensor& ids, int64_t width, const char* what);
// table is f32 [R, C] and `rows` holds one row of it per id (kernel names the call in messages).
void table_rows_per_id(const Tensor& table, const Tensor& ids, const Tensor& rows, const char* kernel);
// The error for an id outside a table's [0, n_rows).
[[noreturn]] void id_outside_table(int64_t id, int64_t position, int64_t n_rows);

struct GemmDims {
  int64_t m, k, n;  // C [m, n] = op(A) [m, k] · op(B) [k, n]
};
GemmDims gemm_dims(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c);

void rmsnorm_forward(const Tensor& x, const Tensor& g, const Tensor& y, const Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& g, const Tensor& rstd, const Tensor& dx,
                      const Tensor& dg);

// Returns the vocabulary size. dlogits may be null (forward only).
int64_t cross_entropy(const Tensor& logits, const Tensor& targets, const Tensor& losses, const Tensor* dlogits);

void compress_ids(const Tensor& ids, const Tensor& compress, const Tensor& out);
void ngram_hash(const Tensor& ids_c, int64_t pad_c, const Tensor& multipliers, const Tensor& primes,
                const Tensor& offsets, int max_ngram, int heads, const Tensor& rows);

void adamw(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v);
void sparse_adam(const Tensor& table, const Tensor& rows, const Tensor& row_grads, const Tensor& m, const Tensor& v);

}  // namespace engram::kernels::checks
