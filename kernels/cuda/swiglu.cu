// SwiGLU on the GPU, the CUDA side of kernels/swiglu.h: the CPU's float formulas, one thread per
// four elements where the tensors allow (else per element). Outputs must not alias inputs. Outputs
// may also be bf16 (kernels::matmul_operand_dtype): the activation and its gradients feed products
// only, so they are written in the dtype the products take, rounded to nearest even, instead of f32
// then a rounded copy. Likewise gate, up and dout may be bf16, as the products wrote them: read as
// the floats they hold, computed on as f32 inputs are.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/swiglu.h"

namespace engram::kernels::cuda {

namespace {

// kVec elements per step (common.cuh).
template <int kVec, class In, class Out>
__global__ void swiglu_forward_kernel(const In* gate, const In* up, Out* out, int64_t n) {
  for (int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * kVec; i < n;
       i += int64_t{gridDim.x} * blockDim.x * kVec) {
    const Floats<kVec> g = load_floats<kVec>(gate + i), u = load_floats<kVec>(up + i);
    Floats<kVec> o;
#pragma unroll
    for (int c = 0; c < kVec; ++c) o.v[c] = g.v[c] * sigmoid(g.v[c]) * u.v[c];
    store_floats<kVec>(out + i, o);
  }
}

// dgate = dout·silu'(gate)·up, dup = silu(gate)·dout
template <int kVec, class Grad, class In, class Out>
__global__ void swiglu_backward_kernel(const Grad* dout, const In* gate, const In* up, Out* dgate, Out* dup,
                                       int64_t n) {
  for (int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * kVec; i < n;
       i += int64_t{gridDim.x} * blockDim.x * kVec) {
    const Floats<kVec> d = load_floats<kVec>(dout + i), g = load_floats<kVec>(gate + i), u = load_floats<kVec>(up + i);
    Floats<kVec> dg, du;
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
      const float x = g.v[c], s = sigmoid(x);
      dg.v[c] = d.v[c] * s * (1.0f + x * (1.0f - s)) * u.v[c];
      du.v[c] = x * s * d.v[c];
    }
    store_floats<kVec>(dgate + i, dg);
    store_floats<kVec>(dup + i, du);
  }
}

}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  check_on_cuda("swiglu_forward", gate, up, out);
  check_shape(up, gate.shape(), "swiglu_forward up");
  check_shape(out, gate.shape(), "swiglu_forward out");
  check_dtype(up, gate.dtype(), "swiglu_forward up (the dtype of gate)");
  const int64_t n = gate.numel();
  const bool vectors = four_at_a_time(n, gate, up, out);
  with_f32_or_bf16(gate, "swiglu_forward gate", out, "swiglu_forward out", [&](auto* g, auto* o) {
    using In = std::remove_pointer_t<decltype(g)>;
    using Out = std::remove_pointer_t<decltype(o)>;
    const auto kernel = vectors ? swiglu_forward_kernel<4, In, Out> : swiglu_forward_kernel<1, In, Out>;
    kernel<<<grid_for(vectors ? n / 4 : n), kThreads, 0, compute_stream()>>>(g, static_cast<const In*>(up.raw()), o, n);
  });
  EG_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  check_on_cuda("swiglu_backward", dout, gate, up, dgate, dup);
  check_shape(dout, gate.shape(), "swiglu_backward dout");
  check_shape(up, gate.shape(), "swiglu_backward up");
  check_shape(dgate, gate.shape(), "swiglu_backward dgate");
  check_shape(dup, gate.shape(), "swiglu_backward dup");
  check_dtype(up, gate.dtype(), "swiglu_backward up (the dtype of gate)");
  check_dtype(dup, dgate.dtype(), "swiglu_backward dup (the dtype of dgate)");
  const int64_t n = gate.numel();
  const bool vectors = four_at_a_time(n, dout, gate, up, dgate, dup);
  with_f32_or_bf16(dout, "swiglu_backward dout", gate, "swiglu_backward gate", dgate, "swiglu_backward dgate",
                   [&](auto* d, auto* g, auto* dg) {
                     using Grad = std::remove_pointer_t<decltype(d)>;
                     using In = std::remove_pointer_t<decltype(g)>;
                     using Out = std::remove_pointer_t<decltype(dg)>;
                     const auto kernel =
                         vectors ? swiglu_backward_kernel<4, Grad, In, Out> : swiglu_backward_kernel<1, Grad, In, Out>;
                     kernel<<<grid_for(vectors ? n / 4 : n), kThreads, 0, compute_stream()>>>(
                         d, g, static_cast<const In*>(up.raw()), dg, static_cast<Out*>(dup.raw()), n);
                   });
  EG_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
}

}  // namespace engram::kernels::cuda
