#pragma once
// SwiGLU MLP (MODEL.md §2): y = W_2 (silu(W_1 x) ⊙ W_3 x). Used for dense layers
// ("layers.{l}.mlp") and shared experts ("layers.{l}.moe.shared").
#include <string>

#include "runtime/parameters.h"

namespace engram {

class SwiGluMlp {
 public:
  // Registers <prefix>.w1.weight [F,D], <prefix>.w3.weight [F,D] (init N(0, in_std)) and
  // <prefix>.w2.weight [D,F] (init N(0, out_std)), all in the Decay group.
  SwiGluMlp(ParameterRegistry& params, const std::string& prefix, int64_t d_model, int64_t d_ff, double in_std,
            double out_std);

  // x [N, D] -> [N, D], plus residual [N, D] (f32) when given, added by the last product as it writes
  // (no separate sum: the block's residual stream); saves what backward needs.
  Tensor forward(const Tensor& x, const Tensor& residual = Tensor());
  Tensor backward(const Tensor& dy);  // -> dx [N, D]; accumulates weight gradients
  // The same, added into dx [N, D] (f32) by the last product (beta = 1) instead of a separate sum: the
  // MoE adds its shared experts' input gradient to the routed experts'.
  void backward_add_to(const Tensor& dy, Tensor& dx);

 private:
  void backward_into(const Tensor& dy, Tensor& dx, float beta);  // dx = beta·dx + backward(dy)

  Parameter& w1_;
  Parameter& w3_;
  Parameter& w2_;
  // As the products take them (kernels::matmul_operand: bf16 under BF16 on CUDA, rounded once per
  // forward; the hidden activation written by the SwiGLU in that dtype): the input, the hidden
  // activation and the weights, for backward.
  Tensor x_, act_, w1_operand_, w3_operand_, w2_operand_;
  Tensor gate_, up_;  // the products' outputs, in the same dtype as act_
};

}  // namespace engram
