// Matrix products on the GPU through cuBLASLt, the CUDA side of kernels/gemm.h. Inputs f32 (true
// float32 products: CUBLAS_COMPUTE_32F, no TF32) or bf16, output f32 or bf16, always float32
// accumulation and float32 alpha/beta (DESIGN.md decision 7). Under MatmulPrecision::BF16, f32
// operands are rounded to bf16 copies first, so both modes share one product path; modules round a
// tensor that several products take once, through matmul_operand.
//
// Cheap per call, because the MoE layers issue many products a step:
// - the cuBLASLt plan of a product (descriptors and the heuristic's algorithm) is made once per
//   PlanKey and kept for the life of the process (PlanCache);
// - grouped products round their whole operands to bf16 once per call, not once per group;
// - grouped products of bf16 operands with float32 output, or bf16 output and beta 0 (the MoE under
//   BF16) run as one launch of our own tensor-core kernel (grouped_mma.h): cublasGemmGroupedBatchedEx (cuBLAS 13.1) answers
//   CUBLAS_STATUS_NOT_SUPPORTED for bf16 A/B with f32 C (measured on an H100), and cuBLASLt has no
//   grouped matmul with per-group shapes. Other grouped products (float32 parity mode, odd shapes)
//   run one cublasLtMatmul per group.
#include <cuda_bf16.h>

#include <algorithm>
#include <compare>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_mma.h"
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

void check_dtypes(const char* what, const Tensor& a, const Tensor& b, const Tensor& c) {
  EG_ASSERT(is_float(a.dtype()) && is_float(b.dtype()) && is_float(c.dtype()) &&
                (a.dtype() == b.dtype() || matmul_precision() == MatmulPrecision::BF16),
            what, ": a ", a.describe(), ", b ", b.describe(), ", c ", c.describe(),
            ": a and b must be both f32 or both bf16 (one of each under BF16 matmul precision), c f32 or bf16");
}

// The largest power of two (at most 256) that divides the address: cuBLASLt assumes 256-byte
// aligned matrices unless told otherwise, and row blocks of grouped GEMMs start anywhere.
uint32_t alignment(const void* ptr) {
  uint32_t a = 256;
  while (reinterpret_cast<uintptr_t>(ptr) % a != 0) a /= 2;
  return a;
}

// Owners of cuBLASLt descriptors (host memory), destroyed however construction ends.
struct MatmulDesc {
  cublasLtMatmulDesc_t handle = nullptr;
  MatmulDesc() { EG_CUBLAS_CHECK(cublasLtMatmulDescCreate(&handle, CUBLAS_COMPUTE_32F, CUDA_R_32F)); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  ~MatmulDesc() { cublasLtMatmulDescDestroy(handle); }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t handle = nullptr;
  // A row-major [rows, cols] matrix is column-major [cols, rows] with leading dimension cols.
  MatrixLayout(DType dtype, int64_t rows, int64_t cols) {
    EG_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&handle, cuda_dtype(dtype), static_cast<uint64_t>(cols),
                                               static_cast<uint64_t>(rows), cols));
  }
  MatrixLayout(const MatrixLayout&) = delete;
  MatrixLayout& operator=(const MatrixLayout&) = delete;
  ~MatrixLayout() { cublasLtMatrixLayoutDestroy(handle); }
};
struct Preference {
  cublasLtMatmulPreference_t handle = nullptr;
  Preference() { EG_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&handle)); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  ~Preference() { cublasLtMatmulPreferenceDestroy(handle); }
};

template <class T>
void set_preference(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attribute, T value) {
  EG_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof(value)));
}

template <class T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, T value) {
  EG_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
}

// Everything a product's plan depends on. Operands are contiguous row-major matrices, so the layouts
// follow from the dtypes, m, n, k and the flags; the heuristic's choice depends on the alignments
// too. alpha and beta are not part of it: the heuristic never sees them, and the algorithm it picks
// takes any alpha and beta. One process uses one device (cuda_context()), so neither is the device.
struct PlanKey {
  DType operands;  // a's and b's, which gemm requires to be equal
  DType output;
  int64_t m, n, k;
  bool trans_a, trans_b;
  // align_c: the smaller of cuBLASLt's C and D alignments (gemm_plus reads one, writes the other).
  uint32_t align_a, align_b, align_c;
  auto operator<=>(const PlanKey&) const = default;
};

// What cublasLtMatmul needs for a key besides pointers and scalars. Row-major C[m, n] = op(A)·op(B)
// is column-major C^T[n, m] = op(B)^T·op(A)^T: cuBLASLt's first operand is b's storage
// (column-major [b.cols, b.rows]) and its second is a's, flags unchanged.
struct Plan {
  MatmulDesc op;
  MatrixLayout first, second, out;
  cublasLtMatmulAlgo_t algo{};

  explicit Plan(const PlanKey& key)
      : first(key.operands, key.trans_b ? key.n : key.k, key.trans_b ? key.k : key.n),
        second(key.operands, key.trans_a ? key.k : key.m, key.trans_a ? key.m : key.k),
        out(key.output, key.m, key.n) {
    set_attribute(op.handle, CUBLASLT_MATMUL_DESC_TRANSA, key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
    set_attribute(op.handle, CUBLASLT_MATMUL_DESC_TRANSB, key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
    const CudaContext& ctx = cuda_context();
    const Preference pref;
    set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(ctx.workspace_bytes));
    set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);
    set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
    set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
    set_preference(pref.handle, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    EG_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt, op.handle, first.handle, second.handle, out.handle,
                                                   out.handle, pref.handle, 1, &heuristic, &found));
    EG_ASSERT(found > 0, "gemm: cuBLASLt has no algorithm for ", dtype_name(key.operands), " a",
              key.trans_a ? "^T" : "", " · b", key.trans_b ? "^T" : "", " -> ", dtype_name(key.output), " c with m ",
              key.m, ", n ", key.n, ", k ", key.k, " (alignments ", key.align_a, ", ", key.align_b, ", ", key.align_c,
              " bytes)");
    algo = heuristic.algo;
  }
};

// The plans made so far, one per key, never evicted: a run meets a few shapes per layer times the
// per-expert row counts it sees, and a plan is under a kilobyte of host memory. A key keeps its first
// algorithm for the life of the process, so a product repeats bitwise however calls interleave;
// across runs the heuristic, a deterministic function of the key on a given device and cuBLASLt
// version, picks the same algorithm again, as it did before plans were kept. Never destroyed, like
// the CUDA context: the descriptors are host memory that the process gives back at exit, and a static
// destructor could run after cuBLASLt's own teardown. The mutex guards the map (threads may share
// the device); plans are only read after insertion, and map nodes never move.
class PlanCache {
 public:
  static const Plan& plan(const PlanKey& key) {
    static auto* cache = new PlanCache();
    const std::lock_guard lock(cache->mutex_);
    auto it = cache->plans_.find(key);
    if (it == cache->plans_.end()) it = cache->plans_.emplace(key, std::make_unique<const Plan>(key)).first;
    return *it->second;
  }

 private:
  std::mutex mutex_;
  std::map<PlanKey, std::unique_ptr<const Plan>> plans_;
};

// Four values of a group: one 8-byte store.
struct alignas(8) Bf16x4 {
  __nv_bfloat162 lo, hi;
};

// y = x rounded to nearest even, a bandwidth-bound pass: the first `groups` groups of four values as
// one 16-byte load and one 8-byte store each, the values after them one at a time.
__global__ void round_to_bf16_kernel(const float* x, __nv_bfloat16* y, int64_t groups, int64_t n) {
  const int64_t first = blockIdx.x * int64_t{blockDim.x} + threadIdx.x, stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t g = first; g < groups; g += stride) {
    const float4 v = reinterpret_cast<const float4*>(x)[g];
    reinterpret_cast<Bf16x4*>(y)[g] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  }
  for (int64_t i = 4 * groups + first; i < n; i += stride) y[i] = __float2bfloat16_rn(x[i]);
}

// A bf16 copy of an f32 operand, rounded to nearest even.
Tensor rounded_to_bf16(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), DType::BF16, Device::CUDA);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const float* in = x.data<float>();
  auto* out = static_cast<__nv_bfloat16*>(y.raw());
  // Groups of four where both pointers allow them (a view of x may start at any element).
  const int64_t groups = alignment(in) >= sizeof(float4) && alignment(out) >= sizeof(Bf16x4) ? n / 4 : 0;
  round_to_bf16_kernel<<<grid_for(groups > 0 ? groups : n), kThreads, 0, compute_stream()>>>(in, out, groups, n);
  EG_CUDA_CHECK_LAUNCH("round_to_bf16_kernel");
  return y;
}

}  // namespace

Tensor matmul_operand(const Tensor& x) {
  check_on_cuda("matmul_operand", x);
  if (x.dtype() != DType::F32 || matmul_operand_dtype(Device::CUDA) != DType::BF16) return x;
  return rounded_to_bf16(x);
}

namespace {

// d = alpha·op(a)·op(b) + beta·c for operands as they are (both f32 or both bf16), c and d of one
// dtype and shape (d may be c): the one cuBLASLt path of gemm, gemm_plus and gemm_float32.
void multiply(const char* what, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c,
              Tensor& d, float alpha, float beta) {
  const checks::GemmDims dims = checks::gemm_dims(a, trans_a, b, trans_b, d);
  if (dims.m == 0 || dims.n == 0) return;
  if (dims.k == 0) {  // nothing to multiply: D = beta·C (0 overwrites NaN), as on the CPU
    EG_ASSERT(beta == 0.0f || d.dtype() == DType::F32, what, ": k = 0 with beta ", beta, " on ", d.describe());
    if (beta == 0.0f) {
      d.zero_();
    } else {
      if (c.raw() != d.raw()) d.copy_from(c);
      if (beta != 1.0f) scale_(d, beta);
    }
    return;
  }
  const uint32_t align_c = std::min(alignment(c.raw()), alignment(d.raw()));
  const Plan& plan = PlanCache::plan({a.dtype(), d.dtype(), dims.m, dims.n, dims.k, trans_a, trans_b,
                                      alignment(a.raw()), alignment(b.raw()), align_c});
  const CudaContext& ctx = cuda_context();
  EG_CUBLAS_CHECK(cublasLtMatmul(ctx.cublaslt, plan.op.handle, &alpha, b.raw(), plan.first.handle, a.raw(),
                                 plan.second.handle, &beta, c.raw(), plan.out.handle, d.raw(), plan.out.handle,
                                 &plan.algo, ctx.workspace, ctx.workspace_bytes, ctx.compute));
}

}  // namespace

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  check_on_cuda("gemm", a, b, c);
  check_dtypes("gemm", a, b, c);
  // Under BF16 an f32 operand is rounded here (once per product: a tensor several products take is
  // passed already rounded); after that both operands have one dtype.
  multiply("gemm", matmul_operand(a), trans_a, matmul_operand(b), trans_b, c, c, alpha, beta);
}

void gemm_plus(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c, Tensor& d) {
  check_on_cuda("gemm_plus", a, b, c, d);
  check_dtypes("gemm_plus", a, b, d);
  checks::gemm_plus_sum(c, d);
  multiply("gemm_plus", matmul_operand(a), trans_a, matmul_operand(b), trans_b, c, d, 1.0f, 1.0f);
}

void gemm_float32(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
                  float beta) {
  check_on_cuda("gemm_float32", a, b, c);
  EG_ASSERT(a.dtype() == DType::F32 && b.dtype() == DType::F32 && c.dtype() == DType::F32,
            "gemm_float32: a ", a.describe(), ", b ", b.describe(), ", c ", c.describe(), " must all be f32");
  multiply("gemm_float32", a, trans_a, b, trans_b, c, c, alpha, beta);
}

// Grouped products take their whole operands as products take them, rounded once per call (the
// groups then multiply slices of the copies: the values rounding each group's rows would give).
void grouped_gemm(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                  float beta) {
  check_on_cuda("grouped_gemm", a, b, c);
  check_dtypes("grouped_gemm", a, b, c);
  const Tensor a_product = matmul_operand(a), b_product = matmul_operand(b);
  if (grouped_mma(a_product, b_product, trans_b, c, offsets, beta)) return;
  gemm_groups::grouped_gemm(gemm, a_product, b_product, trans_b, c, offsets, beta);
}

void grouped_gemm_pair(const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2, bool trans_b, Tensor& c,
                       const std::vector<int64_t>& offsets) {
  check_on_cuda("grouped_gemm_pair", a, b, a2, b2, c);
  check_dtypes("grouped_gemm_pair", a, b, c);
  check_dtypes("grouped_gemm_pair", a2, b2, c);
  const Tensor a_product = matmul_operand(a), b_product = matmul_operand(b);
  const Tensor a2_product = matmul_operand(a2), b2_product = matmul_operand(b2);
  if (grouped_mma_pair(a_product, b_product, a2_product, b2_product, trans_b, c, offsets)) return;
  if (c.dtype() == DType::F32) {
    gemm_groups::grouped_gemm_pair(gemm, a_product, b_product, a2_product, b2_product, trans_b, c, offsets);
    return;
  }
  // The per-group products add the second into the first's output: into a bf16 c that would round
  // twice, so they sum in f32 and the sum is rounded once, as the kernel rounds it.
  Tensor sum = Tensor::empty(c.shape(), DType::F32, Device::CUDA);
  gemm_groups::grouped_gemm_pair(gemm, a_product, b_product, a2_product, b2_product, trans_b, sum, offsets);
  c.copy_from(rounded_to_bf16(sum));
}

void grouped_gemm_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets) {
  check_on_cuda("grouped_gemm_wgrad", dc, a, db);
  check_dtypes("grouped_gemm_wgrad", dc, a, db);
  const Tensor dc_product = matmul_operand(dc), a_product = matmul_operand(a);
  if (grouped_mma_wgrad(dc_product, a_product, db, offsets)) return;
  gemm_groups::grouped_gemm_wgrad(gemm, dc_product, a_product, db, offsets);
}

}  // namespace engram::kernels::cuda
