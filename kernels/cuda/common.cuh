#pragma once
// Shared pieces of the CUDA kernels (included by kernels/cuda/*.cu only): launch shapes, argument
// checks, block reductions and the report of invalid indices found on the device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"
#include "runtime/tensor.h"

namespace engram::kernels::cuda {

constexpr int kThreads = 256;  // threads per block of every kernel here (a multiple of 32)

// Every kernel runs on the compute stream: in issue order, after the copies that fed it.
inline cudaStream_t compute_stream() { return cuda_context().compute; }

// Blocks of a grid-stride loop over n items: one item per thread up to 2^16 blocks, then loops.
inline unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 65536));
}

// Every tensor argument of a CUDA kernel must be on the device (dispatch looked at the first only).
template <class... T>
void check_on_cuda(const char* kernel, const T&... tensors) {
  int index = 0;
  (
      [&](const Tensor& t) {
        ++index;
        EG_ASSERT(!t.defined() || t.device() == Device::CUDA, kernel, ": tensor argument ", index, " is ",
                  t.describe(), ", expected a cuda tensor");
      }(tensors),
      ...);
}

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <class T, class Op>
__device__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;
}

// op over the block's values, returned to every thread. Fixed tree order for a given blockDim.x
// (a multiple of 32), so results repeat bitwise from run to run. All threads must call it.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce(v, op);
  __syncthreads();  // a previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

struct Sum {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// The first position (smallest index) at which a kernel found an invalid value, for the host to
// report as the CPU kernel would. Kernels call report_bad_position(slot, i); position() waits for
// the device, so only kernels that validate user data (ids, targets) use it.
class FirstBadPosition {
 public:
  FirstBadPosition() : slot_(Tensor::empty({1}, DType::I64, Device::CUDA)) {
    EG_CUDA_CHECK(cudaMemsetAsync(slot_.raw(), 0xff, sizeof(unsigned long long), compute_stream()));
  }
  unsigned long long* slot() const { return static_cast<unsigned long long*>(slot_.raw()); }
  int64_t position() const {  // −1 when every position was valid
    unsigned long long value = 0;
    EG_CUDA_CHECK(cudaMemcpyAsync(&value, slot(), sizeof(value), cudaMemcpyDeviceToHost, compute_stream()));
    EG_CUDA_CHECK(cudaStreamSynchronize(compute_stream()));
    return value == ~0ull ? -1 : static_cast<int64_t>(value);
  }

 private:
  Tensor slot_;
};

__device__ inline void report_bad_position(unsigned long long* slot, int64_t i) {
  atomicMin(slot, static_cast<unsigned long long>(i));
}

// Element `position` of an integer tensor (i32 or i64), read back for an error message.
inline int64_t integer_at(const Tensor& t, int64_t position) {
  const Tensor one = t.view({-1}).slice(position, position + 1);
  return t.dtype() == DType::I32 ? one.to_vector<int32_t>()[0] : one.to_vector<int64_t>()[0];
}

}  // namespace engram::kernels::cuda
