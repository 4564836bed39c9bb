#include "kernels/matmul_precision.h"

#include <atomic>

namespace engram::kernels {

namespace {
std::atomic<MatmulPrecision> g_precision{MatmulPrecision::Float32};
}  // namespace

void set_matmul_precision(MatmulPrecision precision) { g_precision.store(precision); }
MatmulPrecision matmul_precision() { return g_precision.load(); }

}  // namespace engram::kernels
