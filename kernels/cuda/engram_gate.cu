// The Engram gate on the GPU, the CUDA side of kernels/engram_gate.h. One block per row: the row's
// dot product (<q̂, k̂> forward, Σ du·v backward) is reduced in double in a fixed tree order, the
// scalar formulas are kernels/engram_gate_math.h (the CPU's own), then the block writes the row.
#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/engram_gate.h"
#include "kernels/engram_gate_math.h"

namespace engram::kernels::cuda {

namespace {

// Σ a[c]·b[c] over a row in double, in a fixed order; every thread of the block gets it.
__device__ double row_dot(const float* a, const float* b, int64_t dim) {
  double dot = 0.0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) dot += static_cast<double>(a[c]) * b[c];
  return block_reduce(dot, Sum{}, 0.0);
}

__global__ void engram_gate_forward_kernel(const float* qn, const float* kn, const float* v, int64_t dim,
                                           float* score, float* alpha, float* u) {
  const int64_t offset = blockIdx.x * dim;
  const float s = gate_score(row_dot(qn + offset, kn + offset, dim), dim);
  const float a = gate_alpha(s);
  if (threadIdx.x == 0) {
    score[blockIdx.x] = s;
    alpha[blockIdx.x] = a;
  }
  const float* vr = v + offset;
  float* ur = u + offset;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) ur[c] = a * vr[c];
}

__global__ void engram_gate_backward_kernel(const float* du, const float* qn, const float* kn, const float* v,
                                            const float* score, const float* alpha, int64_t dim, float* dqn,
                                            float* dkn, float* dv) {
  const int64_t offset = blockIdx.x * dim;
  const float* g = du + offset;
  const float* vr = v + offset;
  const float a = alpha[blockIdx.x];
  const float dsum = gate_dot_grad(row_dot(g, vr, dim), a, score[blockIdx.x], dim);
  const float* q = qn + offset;
  const float* k = kn + offset;
  float* dq = dqn + offset;
  float* dk = dkn + offset;
  float* dvr = dv + offset;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    dq[c] = dsum * k[c];
    dk[c] = dsum * q[c];
    dvr[c] = a * g[c];
  }
}

}  // namespace

void engram_gate_forward(const Tensor& qn, const Tensor& kn, const Tensor& v, Tensor& score, Tensor& alpha,
                         Tensor& u) {
  check_on_cuda("engram_gate_forward", qn, kn, v, score, alpha, u);
  checks::engram_gate_forward(qn, kn, v, score, alpha, u);
  const int64_t rows = qn.rows();
  if (rows == 0) return;
  engram_gate_forward_kernel<<<static_cast<unsigned>(rows), kThreads, 0, compute_stream()>>>(
      qn.data<float>(), kn.data<float>(), v.data<float>(), qn.cols(), score.data<float>(), alpha.data<float>(),
      u.data<float>());
  EG_CUDA_CHECK_LAUNCH("engram_gate_forward_kernel");
}

void engram_gate_backward(const Tensor& du, const Tensor& qn, const Tensor& kn, const Tensor& v,
                          const Tensor& score, const Tensor& alpha, Tensor& dqn, Tensor& dkn, Tensor& dv) {
  check_on_cuda("engram_gate_backward", du, qn, kn, v, score, alpha, dqn, dkn, dv);
  checks::engram_gate_backward(du, qn, kn, v, score, alpha, dqn, dkn, dv);
  const int64_t rows = qn.rows();
  if (rows == 0) return;
  engram_gate_backward_kernel<<<static_cast<unsigned>(rows), kThreads, 0, compute_stream()>>>(
      du.data<float>(), qn.data<float>(), kn.data<float>(), v.data<float>(), score.data<float>(),
      alpha.data<float>(), qn.cols(), dqn.data<float>(), dkn.data<float>(), dv.data<float>());
  EG_CUDA_CHECK_LAUNCH("engram_gate_backward_kernel");
}

}  // namespace engram::kernels::cuda
