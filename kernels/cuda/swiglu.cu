// SwiGLU on the GPU, the CUDA side of kernels/swiglu.h: the CPU's float formulas, one thread per
// element. Outputs must not alias inputs. Outputs may also be bf16 (kernels::matmul_operand_dtype):
// the activation and its gradients feed products only, so they are written in the dtype the
// products take, rounded to nearest even, instead of f32 then a rounded copy.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/swiglu.h"

namespace engram::kernels::cuda {

namespace {

template <class Out>
__global__ void swiglu_forward_kernel(const float* gate, const float* up, Out* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = static_cast<Out>(gate[i] * sigmoid(gate[i]) * up[i]);
}

// dgate = dout·silu'(gate)·up, dup = silu(gate)·dout
template <class Out>
__global__ void swiglu_backward_kernel(const float* dout, const float* gate, const float* up, Out* dgate, Out* dup,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const float x = gate[i], s = sigmoid(x);
    dgate[i] = static_cast<Out>(dout[i] * s * (1.0f + x * (1.0f - s)) * up[i]);
    dup[i] = static_cast<Out>(x * s * dout[i]);
  }
}

}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  check_on_cuda("swiglu_forward", gate, up, out);
  check_shape(up, gate.shape(), "swiglu_forward up");
  check_shape(out, gate.shape(), "swiglu_forward out");
  const int64_t n = gate.numel();
  with_f32_or_bf16(out, "swiglu_forward out", [&](auto* o) {
    swiglu_forward_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(gate.data<float>(), up.data<float>(), o, n);
  });
  EG_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  check_on_cuda("swiglu_backward", dout, gate, up, dgate, dup);
  check_shape(dout, gate.shape(), "swiglu_backward dout");
  check_shape(up, gate.shape(), "swiglu_backward up");
  check_shape(dgate, gate.shape(), "swiglu_backward dgate");
  check_shape(dup, gate.shape(), "swiglu_backward dup");
  check_dtype(dup, dgate.dtype(), "swiglu_backward dup (the dtype of dgate)");
  const int64_t n = gate.numel();
  with_f32_or_bf16(dgate, "swiglu_backward dgate", [&](auto* dg) {
    using Out = std::remove_pointer_t<decltype(dg)>;
    swiglu_backward_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(
        dout.data<float>(), gate.data<float>(), up.data<float>(), dg, static_cast<Out*>(dup.raw()), n);
  });
  EG_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace engram::kernels::cuda
