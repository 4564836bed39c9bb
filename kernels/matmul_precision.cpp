#include "kernels/matmul_precision.h"

#include <atomic>

namespace engram::kernels {

namespace {
std::atomic<MatmulPrecision> g_precision{MatmulPrecision::Float32};
}  // namespace

void set_matmul_precision(MatmulPrecision precision) { g_precision.store(precision); }
MatmulPrecision matmul_precision() { return g_precision.load(); }

DType matmul_operand_dtype(Device device) {
  return device == Device::CUDA && matmul_precision() == MatmulPrecision::BF16 ? DType::BF16 : DType::F32;
}

}  // namespace engram::kernels
