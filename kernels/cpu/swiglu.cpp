// SwiGLU activation on the CPU, built from the silu kernels and an elementwise product.
// Outputs must not alias inputs.
#include "kernels/swiglu.h"

#include "kernels/elementwise.h"

namespace engram::kernels::cpu {

namespace {

// y ⊙= x
void multiply_(Tensor& y, const Tensor& x) {
  float* yp = y.data<float>();
  const float* xp = x.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] *= xp[i];
}

}  // namespace

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) {
  check_shape(up, gate.shape(), "swiglu_forward up");
  check_shape(out, gate.shape(), "swiglu_forward out");
  silu_forward(gate, out);
  multiply_(out, up);
}

void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  check_shape(dout, gate.shape(), "swiglu_backward dout");
  check_shape(up, gate.shape(), "swiglu_backward up");
  check_shape(dgate, gate.shape(), "swiglu_backward dgate");
  check_shape(dup, gate.shape(), "swiglu_backward dup");
  // dgate = dout·up·silu'(gate), dup = dout·silu(gate)
  silu_backward(dout, gate, dgate);
  multiply_(dgate, up);
  silu_forward(gate, dup);
  multiply_(dup, dout);
}

}  // namespace engram::kernels::cpu
