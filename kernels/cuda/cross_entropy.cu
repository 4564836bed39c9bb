// Softmax cross-entropy on the GPU, the CUDA side of kernels/cross_entropy.h. One block per row:
// the row max (float), Σ exp(logit − max) in double (fixed tree order), the loss in double as on
// the CPU, then dlogits written in a last pass. Rows of up to 32,768 logits taken four at a time (a
// vocabulary that is a multiple of 4, 16-byte aligned logits) are read from memory once and held in
// registers for the three passes. A thread only overwrites the logits it read itself,
// after the block has finished reading, so dlogits may alias logits. dlogits may also be bf16
// (kernels::matmul_operand_dtype: the head's two products take it), written rounded to nearest even.
#include <cstdint>
#include <type_traits>

#include "kernels/checks.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

constexpr int kRowThreads = 512;  // rows are vocabulary-long (tens of thousands of logits)

// kChunks > 0: each thread holds its kChunks accesses of kVec logits in registers (vocab ≤ kChunks ·
// kVec · kRowThreads), reading the row from memory once. 0: three passes over memory, any vocab: the
// rows in flight (four blocks an SM) outgrow the L2, so each pass reads HBM again. Both visit a
// thread's logits in the same ascending order, so they give the same bits.
template <int kVec, int kChunks, class Out>
__global__ void __launch_bounds__(kRowThreads)
    cross_entropy_kernel(const float* logits, const int32_t* targets, int64_t vocab, float grad_scale, float* losses,
                         Out* dlogits, unsigned long long* bad_target) {
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  const int32_t y = targets[r];
  if (y < 0 || y >= vocab) {  // the whole block leaves together: y is the same for every thread
    if (threadIdx.x == 0) report_bad_position(bad_target, r);
    return;
  }
  // kVec logits at a time (common.cuh), thread t taking vectors t, t + blockDim.x, …
  const int64_t first = int64_t{threadIdx.x} * kVec, stride = int64_t{blockDim.x} * kVec;
  Floats<kVec> held[kChunks > 0 ? kChunks : 1];
  if constexpr (kChunks > 0) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
      if (first + c * stride < vocab) held[c] = load_floats<kVec>(row + first + c * stride);
  }
  // f(j, logits j .. j + kVec − 1) for this thread's vectors in ascending j.
  const auto for_each_vector = [&](auto&& f) {
    if constexpr (kChunks > 0) {
#pragma unroll
      for (int c = 0; c < kChunks; ++c)
        if (first + c * stride < vocab) f(first + c * stride, held[c]);
    } else {
      for (int64_t j = first; j < vocab; j += stride) f(j, load_floats<kVec>(row + j));
    }
  };
  float row_max = -INFINITY;
  for_each_vector([&](int64_t, const Floats<kVec>& x) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) row_max = fmaxf(row_max, x.v[i]);
  });
  row_max = block_reduce(row_max, Max{}, -INFINITY);
  double sum = 0.0;
  for_each_vector([&](int64_t, const Floats<kVec>& x) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) sum += expf(x.v[i] - row_max);
  });
  sum = block_reduce(sum, Sum{}, 0.0);  // also the barrier after which row[y] may be overwritten
  const float target_logit = row[y];
  if (threadIdx.x == 0) losses[r] = static_cast<float>(row_max + log(sum) - target_logit);
  __syncthreads();  // every thread has read row[y] before its owner overwrites it
  if (dlogits == nullptr) return;
  // dlogits = grad_scale · (softmax − onehot(y)), with softmax_j = exp(row[j] − max) / Σ.
  const float scale = static_cast<float>(grad_scale / sum);
  Out* drow = dlogits + r * vocab;
  for_each_vector([&](int64_t j, const Floats<kVec>& x) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      float d = expf(x.v[i] - row_max) * scale;
      if (j + i == y) d -= grad_scale;
      drow[j + i] = static_cast<Out>(d);
    }
  });
}

// The kernel for a vocabulary: held in registers in the fewest chunks that take it, else streamed.
template <int kVec, class Out>
auto cross_entropy_kernel_for(int64_t vocab) {
  constexpr int64_t kPerChunk = int64_t{kVec} * kRowThreads;
  if constexpr (kVec == 4) {
    if (vocab <= 4 * kPerChunk) return cross_entropy_kernel<kVec, 4, Out>;
    if (vocab <= 8 * kPerChunk) return cross_entropy_kernel<kVec, 8, Out>;
    if (vocab <= 16 * kPerChunk) return cross_entropy_kernel<kVec, 16, Out>;
  }
  return cross_entropy_kernel<kVec, 0, Out>;
}

void cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor& losses, Tensor* dlogits) {
  const int64_t vocab = checks::cross_entropy(logits, targets, losses, dlogits);
  const int64_t rows = logits.dim(0);
  if (rows == 0) return;
  FirstBadPosition bad_target;
  const bool vectors = four_at_a_time(vocab, logits);
  const auto launch = [&](auto* d) {
    using Out = std::remove_pointer_t<decltype(d)>;
    const auto kernel = vectors ? cross_entropy_kernel_for<4, Out>(vocab) : cross_entropy_kernel_for<1, Out>(vocab);
    kernel<<<static_cast<unsigned>(rows), kRowThreads, 0, compute_stream()>>>(
        logits.data<float>(), targets.data<int32_t>(), vocab, grad_scale, losses.data<float>(), d, bad_target.slot());
  };
  if (dlogits == nullptr) {
    launch(static_cast<float*>(nullptr));
  } else {
    with_f32_or_bf16(*dlogits, "cross_entropy dlogits", launch);
  }
  EG_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
  const int64_t r = bad_target.position();
  EG_CHECK(r < 0, "cross_entropy: target ", integer_at(targets, r), " at row ", r,
           " is outside the vocabulary [0, ", vocab, ")");
}

}  // namespace

void cross_entropy_forward(const Tensor& logits, const Tensor& targets, Tensor& losses) {
  check_on_cuda("cross_entropy_forward", logits, targets, losses);
  cross_entropy(logits, targets, 0.0f, losses, nullptr);
}

void cross_entropy_forward_backward(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor& losses,
                                    Tensor& dlogits) {
  check_on_cuda("cross_entropy_forward_backward", logits, targets, losses, dlogits);
  cross_entropy(logits, targets, grad_scale, losses, &dlogits);
}

}  // namespace engram::kernels::cuda
