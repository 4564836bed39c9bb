// SwiGLU on the GPU, the CUDA side of kernels/swiglu.h: the CPU's float formulas, one thread per
// element. Outputs must not alias inputs.
#include "kernels/cuda/common.cuh"
#include "kernels/swiglu.h"

namespace engram::kernels::cuda {

namespace {

__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// dgate = dout·silu'(gate)·up, dup = silu(gate)·dout
__global__ void swiglu_backward_kernel(const float* dout, const float* gate, const float* up, float* dgate,
                                       float* dup, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float x = gate[i], s = sigmoid(x);
    dgate[i] = dout[i] * s * (1.0f + x * (1.0f - s)) * up[i];
    dup[i] = x * s * dout[i];
  }
}

}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  check_on_cuda("swiglu_forward", gate, up, out);
  check_shape(up, gate.shape(), "swiglu_forward up");
  check_shape(out, gate.shape(), "swiglu_forward out");
  const int64_t n = gate.numel();
  swiglu_forward_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(gate.data<float>(), up.data<float>(),
                                                                         out.data<float>(), n);
  EG_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  check_on_cuda("swiglu_backward", dout, gate, up, dgate, dup);
  check_shape(dout, gate.shape(), "swiglu_backward dout");
  check_shape(up, gate.shape(), "swiglu_backward up");
  check_shape(dgate, gate.shape(), "swiglu_backward dgate");
  check_shape(dup, gate.shape(), "swiglu_backward dup");
  const int64_t n = gate.numel();
  swiglu_backward_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(
      dout.data<float>(), gate.data<float>(), up.data<float>(), dgate.data<float>(), dup.data<float>(), n);
  EG_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace engram::kernels::cuda
