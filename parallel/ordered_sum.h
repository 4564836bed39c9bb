#pragma once
// The summation behind the NCCL communicator's float reductions (CUDA builds with NCCL only;
// includes CUDA headers). NCCL's own float reductions may combine ranks in an order that depends on
// its algorithm, protocol and channel choices, so their bits are not guaranteed to repeat across
// runs or to agree with another group size (DESIGN.md decisions 4 and 5: same inputs, same bits).
// The communicator therefore only moves float blocks with NCCL and adds them here, in rank order.
#include <cuda_runtime.h>

#include <cstdint>

#include "parallel/communicator.h"

namespace engram {

// out[i] = in[0·n + i] + in[1·n + i] + … + in[(blocks − 1)·n + i], added left to right (block 0
// first, no zero added), for i in [0, n): the same bits on every run, every rank and every GPU.
// type F32 or F64; in and out are device memory and may not overlap; queued on `stream`.
void ordered_block_sum(const void* in, void* out, int64_t n, int blocks, CommType type, cudaStream_t stream);

}  // namespace engram
