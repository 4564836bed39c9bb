// Matrix products on the GPU through cuBLASLt, the CUDA side of kernels/gemm.h. Inputs f32 (true
// float32 products: CUBLAS_COMPUTE_32F, no TF32) or bf16, output f32 or bf16, always float32
// accumulation and float32 alpha/beta (DESIGN.md decision 7). Under MatmulPrecision::BF16, f32
// operands are rounded to bf16 copies first, so both modes share one product path.
#include <cuda_bf16.h>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/gemm_groups.h"
#include "kernels/matmul_precision.h"

namespace engram::kernels::cuda {

namespace {

cudaDataType_t cuda_dtype(DType dtype) {
  return dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

bool is_float(DType dtype) { return dtype == DType::F32 || dtype == DType::BF16; }

// The largest power of two (at most 256) that divides the address: cuBLASLt assumes 256-byte
// aligned matrices unless told otherwise, and row blocks of grouped GEMMs start anywhere.
uint32_t alignment(const void* ptr) {
  uint32_t a = 256;
  while (reinterpret_cast<uintptr_t>(ptr) % a != 0) a /= 2;
  return a;
}

// Owners of cuBLASLt descriptors, destroyed however the call ends.
struct MatmulDesc {
  cublasLtMatmulDesc_t handle = nullptr;
  ~MatmulDesc() {
    if (handle != nullptr) cublasLtMatmulDescDestroy(handle);
  }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t handle = nullptr;
  // A row-major [rows, cols] matrix is column-major [cols, rows] with leading dimension cols.
  MatrixLayout(DType dtype, int64_t rows, int64_t cols) {
    EG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&handle, cuda_dtype(dtype), static_cast<uint64_t>(cols),
                                               static_cast<uint64_t>(rows), cols));
  }
  ~MatrixLayout() {
    if (handle != nullptr) cublasLtMatrixLayoutDestroy(handle);
  }
};
struct Preference {
  cublasLtMatmulPreference_t handle = nullptr;
  ~Preference() {
    if (handle != nullptr) cublasLtMatmulPreferenceDestroy(handle);
  }
};

template <class T>
void set_preference(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attribute, T value) {
  EG_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof(value)));
}

__global__ void round_to_bf16_kernel(const float* x, __nv_bfloat16* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

// A bf16 copy of an f32 operand, rounded to nearest even.
Tensor rounded_to_bf16(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), DType::BF16, Device::CUDA);
  if (x.numel() == 0) return y;
  round_to_bf16_kernel<<<grid_for(x.numel()), kThreads, 0, compute_stream()>>>(
      x.data<float>(), static_cast<__nv_bfloat16*>(y.raw()), x.numel());
  EG_CUDA_CHECK_LAUNCH("round_to_bf16_kernel");
  return y;
}

}  // namespace

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  check_on_cuda("gemm", a, b, c);
  EG_ASSERT(a.dtype() == b.dtype() && is_float(a.dtype()) && is_float(c.dtype()), "gemm: a ", a.describe(), ", b ",
            b.describe(), ", c ", c.describe(), ": a and b must be both f32 or both bf16, c f32 or bf16");
  const auto [m, k, n] = checks::gemm_dims(a, trans_a, b, trans_b, c);
  if (m == 0 || n == 0) return;
  if (a.dtype() == DType::F32 && k > 0 && matmul_precision() == MatmulPrecision::BF16)
    return gemm(rounded_to_bf16(a), trans_a, rounded_to_bf16(b), trans_b, c, alpha, beta);
  if (k == 0) {  // nothing to multiply: C = beta·C (0 overwrites NaN), as on the CPU
    EG_ASSERT(beta == 0.0f || c.dtype() == DType::F32, "gemm: k = 0 with beta ", beta, " on ", c.describe());
    if (beta == 0.0f) {
      c.zero_();
    } else {
      scale_(c, beta);
    }
    return;
  }
  const CudaContext& ctx = cuda_context();
  // Row-major C[m, n] = op(A)·op(B) is column-major C^T[n, m] = op(B)^T·op(A)^T: cuBLASLt's first
  // operand is b's storage (column-major [b.cols, b.rows]) and its second is a's, flags unchanged.
  MatmulDesc op;
  EG_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op.handle, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_first = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  EG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.handle, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  EG_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(op.handle, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  const MatrixLayout first(b.dtype(), b.rows(), b.cols());
  const MatrixLayout second(a.dtype(), a.rows(), a.cols());
  const MatrixLayout out(c.dtype(), m, n);

  Preference pref;
  EG_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.handle));
  set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(ctx.workspace_bytes));
  set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(b.raw()));
  set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(a.raw()));
  set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(c.raw()));
  set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(c.raw()));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  EG_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt, op.handle, first.handle, second.handle, out.handle,
                                                 out.handle, pref.handle, 1, &heuristic, &found));
  EG_ASSERT(found > 0, "gemm: cuBLASLt has no algorithm for a ", a.describe(), trans_a ? "^T" : "", " · b ",
            b.describe(), trans_b ? "^T" : "", " -> c ", c.describe());
  EG_CUBLAS_CHECK(cublasLtMatmul(ctx.cublaslt, op.handle, &alpha, b.raw(), first.handle, a.raw(), second.handle, &beta,
                                 c.raw(), out.handle, c.raw(), out.handle, &heuristic.algo, ctx.workspace,
                                 ctx.workspace_bytes, ctx.compute));
}

void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets) {
  check_on_cuda("grouped_gemm", a, b, c);
  gemm_groups::grouped_gemm(gemm, a, b, trans_b, c, offsets);
}

void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets) {
  check_on_cuda("grouped_gemm_wgrad", dc, a, db);
  gemm_groups::grouped_gemm_wgrad(gemm, dc, a, db, offsets);
}

}  // namespace engram::kernels::cuda
