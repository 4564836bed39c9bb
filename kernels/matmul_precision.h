#pragma once
// How the CUDA GEMMs multiply float32 operands (DESIGN.md decision 7), process-wide, like a math
// mode: the training run sets it from runtime.matmul_precision; the library's own default is Float32
// so that a kernel called directly computes what its operand types say. The CPU always multiplies
// in float32; bf16 operands are always multiplied as they are.
#include "runtime/tensor.h"

namespace engram::kernels {

enum class MatmulPrecision {
  Float32,  // true float32 products (no TF32): the parity mode
  BF16,     // float32 operands rounded to bfloat16 (nearest even), float32 accumulation and output
};

void set_matmul_precision(MatmulPrecision precision);
MatmulPrecision matmul_precision();

// The dtype that matmul_operand (kernels/gemm.h) gives an f32 tensor on `device`: BF16 on CUDA
// under MatmulPrecision::BF16, F32 otherwise. Lets a kernel write a product's operand in that
// dtype directly (the MoE's token gather) instead of writing f32 and rounding.
DType matmul_operand_dtype(Device device);

}  // namespace engram::kernels
