// Softmax cross-entropy on the GPU, the CUDA side of kernels/cross_entropy.h. One block per row:
// the row max (float), Σ exp(logit − max) in double (fixed tree order), the loss in double as on
// the CPU, then dlogits written in a last pass. A thread only overwrites the logits it read itself,
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

template <int kVec, class Out>
__global__ void cross_entropy_kernel(const float* logits, const int32_t* targets, int64_t vocab, float grad_scale,
                                     float* losses, Out* dlogits, unsigned long long* bad_target) {
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  const int32_t y = targets[r];
  if (y < 0 || y >= vocab) {  // the whole block leaves together: y is the same for every thread
    if (threadIdx.x == 0) report_bad_position(bad_target, r);
    return;
  }
  // kVec logits at a time (common.cuh), thread t taking vectors t, t + blockDim.x, …
  const int64_t first = int64_t{threadIdx.x} * kVec, stride = int64_t{blockDim.x} * kVec;
  float row_max = -INFINITY;
  for (int64_t j = first; j < vocab; j += stride) {
    const Floats<kVec> x = load_floats<kVec>(row + j);
#pragma unroll
    for (int i = 0; i < kVec; ++i) row_max = fmaxf(row_max, x.v[i]);
  }
  row_max = block_reduce(row_max, Max{}, -INFINITY);
  double sum = 0.0;
  for (int64_t j = first; j < vocab; j += stride) {
    const Floats<kVec> x = load_floats<kVec>(row + j);
#pragma unroll
    for (int i = 0; i < kVec; ++i) sum += expf(x.v[i] - row_max);
  }
  sum = block_reduce(sum, Sum{}, 0.0);  // also the barrier after which row[y] may be overwritten
  const float target_logit = row[y];
  if (threadIdx.x == 0) losses[r] = static_cast<float>(row_max + log(sum) - target_logit);
  __syncthreads();  // every thread has read row[y] before its owner overwrites it
  if (dlogits == nullptr) return;
  // dlogits = grad_scale · (softmax − onehot(y)), with softmax_j = exp(row[j] − max) / Σ.
  const float scale = static_cast<float>(grad_scale / sum);
  Out* drow = dlogits + r * vocab;
  for (int64_t j = first; j < vocab; j += stride) {
    const Floats<kVec> x = load_floats<kVec>(row + j);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      float d = expf(x.v[i] - row_max) * scale;
      if (j + i == y) d -= grad_scale;
      drow[j + i] = static_cast<Out>(d);
    }
  }
}

void cross_entropy(const Tensor& logits, const Tensor& targets, float grad_scale, Tensor& losses, Tensor* dlogits) {
  const int64_t vocab = checks::cross_entropy(logits, targets, losses, dlogits);
  const int64_t rows = logits.dim(0);
  if (rows == 0) return;
  FirstBadPosition bad_target;
  const bool vectors = four_at_a_time(vocab, logits);
  const auto launch = [&](auto* d) {
    using Out = std::remove_pointer_t<decltype(d)>;
    const auto kernel = vectors ? cross_entropy_kernel<4, Out> : cross_entropy_kernel<1, Out>;
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
