#pragma once
// Row gather from a table and its deterministic gradient reductions (token embeddings, Engram
// tables, and token permutation for experts, which is a gather by token index).
#include "kernels/dispatch.h"
#include "runtime/row_grads.h"

namespace engram::kernels {

namespace cpu {
// out[i, :] = table[ids[i], :]. table [R, C]; ids i32 or i64 with N elements (any shape);
// out has N·C elements (e.g. [.., C]). out written. An id outside [0, R) is an error.
void embedding_gather(const Tensor& table, const Tensor& ids, Tensor& out);
// dtable[ids[i], :] += dout[i, :] (accumulated). Deterministic: each row sums its
// contributions in ascending i, whatever the backend.
void embedding_scatter_add(const Tensor& dout, const Tensor& ids, Tensor& dtable);
// Sums dout rows per distinct id (ascending i within a row) into a RowGrads (sort + segment sum).
RowGrads reduce_rows(const Tensor& dout, const Tensor& ids);
}  // namespace cpu
#ifdef ENGRAM_HAVE_CUDA
namespace cuda {  // kernels/cuda/embedding.cu, the contracts of cpu:: above
// out may also be bf16: the rows rounded to nearest even (kernels::matmul_operand_dtype); then the
// table may be bf16 too (rows copied as they are).
void embedding_gather(const Tensor& table, const Tensor& ids, Tensor& out);
// dout may also be bf16 (the gradients of the MoE's gathered rows, as its expert products write
// them), added as the floats it holds; dtable stays f32.
void embedding_scatter_add(const Tensor& dout, const Tensor& ids, Tensor& dtable);
RowGrads reduce_rows(const Tensor& dout, const Tensor& ids);  // rows and values on the device
}  // namespace cuda
#endif
EG_KERNEL(embedding_gather)
EG_KERNEL(embedding_scatter_add)
EG_KERNEL(reduce_rows)
}  // namespace engram::kernels
