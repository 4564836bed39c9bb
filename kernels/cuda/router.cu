// MoE routing on the GPU, the CUDA side of kernels/router.h. One warp per token row (E is a few
// hundred at most): scores, their backward, the top-k selection and the losses' per-row terms. Row
// reductions run in warp_reduce's fixed tree, and the losses' sums over rows in fixed orders (chunks
// of rows, then the chunks in order; sum_to_host), in double and without atomics, so every result
// repeats bitwise from run to run. Where the CPU's sums are short and sequential (top-k indices and
// weights, the top-k backward) or absent (the sigmoid backward), the GPU evaluates the CPU's
// expression in the same order with the same roundings (__fmul_rn keeps nvcc from fusing a product
// into an FMA) and matches it bit for bit. Expert ids (made by topk_select, on the device) are checked
// without waiting: a bad one is reported at the host's next wait (kernels/cuda/deferred_errors.h;
// moe_aux_loss waits for its sum, so it raises its own), and the kernels that would read it write
// nothing, as on the CPU.
#include <climits>
#include <cmath>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/router.h"

namespace engram::kernels::cuda {

namespace {

// logsumexp of one row of e logits, on every lane, as the CPU computes it: the max in float, then
// max + log Σ exp(x − max) in double.
__device__ double row_logsumexp(const float* x, int64_t e) {
  float row_max = -INFINITY;
  for (int64_t j = lane_id(); j < e; j += kWarpSize) row_max = fmaxf(row_max, x[j]);
  row_max = warp_all_reduce(row_max, Max{});
  double sum = 0.0;
  for (int64_t j = lane_id(); j < e; j += kWarpSize) sum += exp(static_cast<double>(x[j]) - row_max);
  return row_max + log(warp_all_reduce(sum, Sum{}));
}

__global__ void router_scores_kernel(const float* logits, int64_t n, int64_t e, bool softmax, float* scores) {
  for (int64_t t = first_warp_row(); t < n; t += warp_row_stride()) {
    const float* x = logits + t * e;
    float* s = scores + t * e;
    if (!softmax) {
      for (int64_t j = lane_id(); j < e; j += kWarpSize) s[j] = sigmoid(x[j]);
      continue;
    }
    const double lse = row_logsumexp(x, e);
    for (int64_t j = lane_id(); j < e; j += kWarpSize) s[j] = static_cast<float>(exp(static_cast<double>(x[j]) - lse));
  }
}

// A lane reads and writes only its own columns, after the row's reduction: dlogits may alias dscores.
__global__ void router_scores_backward_kernel(const float* dscores, const float* scores, int64_t n, int64_t e,
                                              bool softmax, float* dlogits) {
  for (int64_t t = first_warp_row(); t < n; t += warp_row_stride()) {
    const float* ds = dscores + t * e;
    const float* s = scores + t * e;
    float* dl = dlogits + t * e;
    if (!softmax) {
      for (int64_t j = lane_id(); j < e; j += kWarpSize) dl[j] = ds[j] * s[j] * (1.0f - s[j]);
      continue;
    }
    // Softmax Jacobian: dl_j = s_j · (ds_j − Σ_i ds_i s_i).
    double dot = 0.0;
    for (int64_t j = lane_id(); j < e; j += kWarpSize) dot += static_cast<double>(ds[j]) * s[j];
    const float dotf = static_cast<float>(warp_all_reduce(dot, Sum{}));
    for (int64_t j = lane_id(); j < e; j += kWarpSize) dl[j] = s[j] * (ds[j] - dotf);
  }
}

// An expert competing for the next slot: its key (score + bias) and index; index −1 is none.
struct Candidate {
  float key;
  int32_t index;
};

// a takes a slot before b: larger key, then lower index. Keys here are never NaN, so this is a strict
// total order and every lane of a reduction ends with the same winner.
__device__ bool precedes(Candidate a, Candidate b) {
  return a.index >= 0 && (b.index < 0 || a.key > b.key || (a.key == b.key && a.index < b.index));
}

__device__ Candidate warp_first(Candidate c) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const Candidate other{__shfl_xor_sync(0xffffffffu, c.key, offset), __shfl_xor_sync(0xffffffffu, c.index, offset)};
    if (precedes(other, c)) c = other;
  }
  return c;
}

// The CPU fills each slot with a scan "largest remaining key, strict >": a NaN key is taken only when
// it is the lowest remaining index (it never wins a comparison), otherwise the slot goes to the first
// remaining non-NaN key in (key desc, index asc) order. So the taken experts are: the non-NaN keys
// that precede-or-equal `last` (the last one taken by key), and every index up to `last_nan` (the
// last NaN taken, which was the lowest remaining index then). The warp keeps just those two, no
// per-expert flags, and picks each slot exactly as the CPU does.
__global__ void topk_select_kernel(const float* scores, const float* bias, int64_t n, int64_t e, int k,
                                   bool normalize, float routed_scale, int32_t* topk_idx, float* topk_w) {
  for (int64_t t = first_warp_row(); t < n; t += warp_row_stride()) {
    const float* s = scores + t * e;
    int32_t* idx = topk_idx + t * k;
    float* w = topk_w + t * k;
    Candidate last{0.0f, -1};
    int32_t last_nan = -1;
    double sum = 0.0;  // of the selected scores, in slot order as on the CPU
    for (int slot = 0; slot < k; ++slot) {
      Candidate best{0.0f, -1};
      int32_t lowest_remaining = INT_MAX;
      for (int64_t j = lane_id(); j < e; j += kWarpSize) {
        const Candidate c{s[j] + bias[j], static_cast<int32_t>(j)};
        const bool taken = isnan(c.key) ? c.index <= last_nan : last.index >= 0 && !precedes(last, c);
        if (taken) continue;
        lowest_remaining = min(lowest_remaining, c.index);
        if (!isnan(c.key) && precedes(c, best)) best = c;
      }
      best = warp_first(best);
      lowest_remaining = __reduce_min_sync(0xffffffffu, lowest_remaining);
      int32_t chosen = best.index;
      if (isnan(s[lowest_remaining] + bias[lowest_remaining])) {
        chosen = last_nan = lowest_remaining;
      } else {
        last = best;
      }
      if (lane_id() == slot % kWarpSize) idx[slot] = chosen;
      sum += s[chosen];
    }
    // Each lane reads back only the slots it wrote.
    for (int slot = lane_id(); slot < k; slot += kWarpSize) {
      const float selected = s[idx[slot]];
      w[slot] = static_cast<float>((normalize ? selected / sum : static_cast<double>(selected)) * routed_scale);
    }
  }
}

// One thread per row, the CPU's loops as written (a row's k slots are few). Nothing when topk_idx
// holds a bad expert.
__global__ void topk_weights_backward_kernel(const float* d_topk_w, const float* scores, const int32_t* topk_idx,
                                             int64_t n, int64_t e, int64_t k, bool normalize, float routed_scale,
                                             const unsigned long long* bad_expert, float* dscores) {
  if (bad_value_reported(bad_expert)) return;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < n; t += int64_t{gridDim.x} * blockDim.x) {
    const float* s = scores + t * e;
    const int32_t* idx = topk_idx + t * k;
    const float* dw = d_topk_w + t * k;
    float* ds = dscores + t * e;
    if (!normalize) {
      for (int64_t slot = 0; slot < k; ++slot) ds[idx[slot]] += __fmul_rn(routed_scale, dw[slot]);
      continue;
    }
    // w_k = c·s_k/Σ ⇒ ∂(Σ_k dw_k w_k)/∂s_m = c/Σ · (dw_m − Σ_k dw_k s_k / Σ). The products of two
    // floats are exact in double, so fused or not they round alike.
    double sum = 0.0, dot = 0.0;
    for (int64_t slot = 0; slot < k; ++slot) {
      sum += s[idx[slot]];
      dot += static_cast<double>(dw[slot]) * s[idx[slot]];
    }
    const double mean = dot / sum;
    for (int64_t slot = 0; slot < k; ++slot)
      ds[idx[slot]] += static_cast<float>(routed_scale / sum * (dw[slot] - mean));
  }
}

// Reports the first entry outside [0, n_experts) (with its value); counts[e] += the entries naming e
// unless counts is null (integer atomics: the counts do not depend on the order).
__global__ void count_experts_kernel(const int32_t* topk_idx, int64_t total, int64_t n_experts, int32_t* counts,
                                     unsigned long long* bad_expert) {
  for (int64_t a = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; a < total; a += int64_t{gridDim.x} * blockDim.x) {
    const int32_t expert = topk_idx[a];
    if (expert < 0 || expert >= n_experts) {
      report_bad_value(bad_expert, a, expert);
    } else if (counts != nullptr) {
      atomicAdd(counts + expert, 1);
    }
  }
}

void report_expert_outside(const char* kernel, int64_t, int64_t expert, int64_t n_experts) {
  checks::expert_outside(expert, n_experts, kernel);
}

// Checks, without waiting, that topk_idx names experts in [0, n_experts) (the CPU's error is raised at
// the next wait); fills counts (i32 [E], zeroed here) when given. Returns the check's device slot,
// for the kernels that must not run on a bad id.
const unsigned long long* check_experts(const Tensor& topk_idx, int64_t n_experts, const char* kernel,
                                        Tensor* counts = nullptr) {
  const int64_t total = topk_idx.numel();
  if (counts != nullptr)
    EG_CUDA_CHECK(cudaMemsetAsync(counts->raw(), 0, counts->nbytes(), compute_stream()));
  unsigned long long* bad_expert = defer_bad_value_check(report_expert_outside, kernel, n_experts, total);
  if (total == 0) return bad_expert;
  count_experts_kernel<<<grid_for(total), kThreads, 0, compute_stream()>>>(
      topk_idx.data<int32_t>(), total, n_experts, counts != nullptr ? counts->data<int32_t>() : nullptr, bad_expert);
  EG_CUDA_CHECK_LAUNCH("count_experts_kernel");
  return bad_expert;
}

// The auxiliary loss's sums over rows go by chunks of this many rows, then over the chunks in order.
constexpr int64_t kRowsPerChunk = 64;

__global__ void row_sums_kernel(const float* scores, int64_t n, int64_t e, double* row_sum) {
  for (int64_t t = first_warp_row(); t < n; t += warp_row_stride()) {
    double sum = 0.0;
    for (int64_t j = lane_id(); j < e; j += kWarpSize) sum += scores[t * e + j];
    sum = warp_reduce(sum, Sum{});
    if (lane_id() == 0) row_sum[t] = sum;
  }
}

// partial[c, j] = Σ_{t in chunk c, ascending} s_tj / S_t: one block per chunk, one thread per column.
__global__ void share_partials_kernel(const float* scores, const double* row_sum, int64_t n, int64_t e,
                                      double* partial) {
  const int64_t n_chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
  for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
    const int64_t end = min(n, (c + 1) * kRowsPerChunk);
    for (int64_t j = threadIdx.x; j < e; j += blockDim.x) {
      double p = 0.0;
      for (int64_t t = c * kRowsPerChunk; t < end; ++t) p += scores[t * e + j] / row_sum[t];
      partial[c * e + j] = p;
    }
  }
}

// Per expert j: f_j = load_j / (N·K), P_j·N = Σ_chunks partial[., j] in order, and the loss term f_j·P_j.
__global__ void aux_loss_terms_kernel(const int32_t* counts, const double* partial, int64_t n, int64_t k, int64_t e,
                                      double* f, double* terms) {
  const int64_t n_chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < e; j += int64_t{gridDim.x} * blockDim.x) {
    double p = 0.0;
    for (int64_t c = 0; c < n_chunks; ++c) p += partial[c * e + j];
    f[j] = counts[j] / static_cast<double>(n * k);
    terms[j] = f[j] * p / static_cast<double>(n);
  }
}

// ∂loss/∂s_tm = (f_m − Σ_i f_i s_ti / S_t) / (N·S_t), times grad_scale, added into dscores; nothing
// when topk_idx holds a bad expert.
__global__ void aux_loss_backward_kernel(const float* scores, const double* row_sum, const double* f, int64_t n,
                                         int64_t e, float grad_scale, const unsigned long long* bad_expert,
                                         float* dscores) {
  if (bad_value_reported(bad_expert)) return;
  for (int64_t t = first_warp_row(); t < n; t += warp_row_stride()) {
    const float* s = scores + t * e;
    double fs = 0.0;
    for (int64_t j = lane_id(); j < e; j += kWarpSize) fs += f[j] * s[j];
    fs = warp_all_reduce(fs, Sum{});
    const double weighted_mean = fs / row_sum[t], scale = grad_scale / (static_cast<double>(n) * row_sum[t]);
    float* ds = dscores + t * e;
    for (int64_t j = lane_id(); j < e; j += kWarpSize) ds[j] += static_cast<float>(scale * (f[j] - weighted_mean));
  }
}

// row_loss[t] = lse_t² and dlogits += grad_scale · 2·lse_t · softmax(x_t). A lane reads and writes only
// its own columns, after the row's reduction: dlogits may alias logits.
__global__ void z_loss_kernel(const float* logits, int64_t n, int64_t e, float grad_scale, double* row_loss,
                              float* dlogits) {
  for (int64_t t = first_warp_row(); t < n; t += warp_row_stride()) {
    const float* x = logits + t * e;
    const double lse = row_logsumexp(x, e);
    if (lane_id() == 0) row_loss[t] = lse * lse;
    const double scale = grad_scale * 2.0 * lse;
    float* dl = dlogits + t * e;
    for (int64_t j = lane_id(); j < e; j += kWarpSize)
      dl[j] += static_cast<float>(scale * exp(static_cast<double>(x[j]) - lse));
  }
}

}  // namespace

void router_scores(const Tensor& logits, ScoreFunc func, Tensor& scores) {
  check_on_cuda("router_scores", logits, scores);
  checks::router_scores(logits, scores);
  const int64_t n = logits.rows(), e = logits.cols();
  if (n == 0 || e == 0) return;
  router_scores_kernel<<<grid_for_rows(n), kThreads, 0, compute_stream()>>>(
      logits.data<float>(), n, e, func == ScoreFunc::Softmax, scores.data<float>());
  EG_CUDA_CHECK_LAUNCH("router_scores_kernel");
}

void router_scores_backward(const Tensor& dscores, const Tensor& scores, ScoreFunc func, Tensor& dlogits) {
  check_on_cuda("router_scores_backward", dscores, scores, dlogits);
  checks::router_scores_backward(dscores, scores, dlogits);
  const int64_t n = scores.rows(), e = scores.cols();
  if (n == 0 || e == 0) return;
  router_scores_backward_kernel<<<grid_for_rows(n), kThreads, 0, compute_stream()>>>(
      dscores.data<float>(), scores.data<float>(), n, e, func == ScoreFunc::Softmax, dlogits.data<float>());
  EG_CUDA_CHECK_LAUNCH("router_scores_backward_kernel");
}

void topk_select(const Tensor& scores, const Tensor& bias, int k, bool normalize, float routed_scale,
                 Tensor& topk_idx, Tensor& topk_w) {
  check_on_cuda("topk_select", scores, bias, topk_idx, topk_w);
  checks::topk_select(scores, bias, k, topk_idx, topk_w);
  const int64_t n = scores.rows(), e = scores.cols();
  EG_ASSERT(e < INT_MAX, "topk_select: ", e, " experts; expert ids are i32");
  if (n == 0) return;
  topk_select_kernel<<<grid_for_rows(n), kThreads, 0, compute_stream()>>>(
      scores.data<float>(), bias.data<float>(), n, e, k, normalize, routed_scale, topk_idx.data<int32_t>(),
      topk_w.data<float>());
  EG_CUDA_CHECK_LAUNCH("topk_select_kernel");
}

void topk_weights_backward(const Tensor& d_topk_w, const Tensor& scores, const Tensor& topk_idx, bool normalize,
                           float routed_scale, Tensor& dscores) {
  check_on_cuda("topk_weights_backward", d_topk_w, scores, topk_idx, dscores);
  checks::topk_weights_backward(d_topk_w, scores, topk_idx, dscores);
  const int64_t n = scores.rows(), e = scores.cols(), k = topk_idx.cols();
  const unsigned long long* bad_expert = check_experts(topk_idx, e, "topk_weights_backward");
  if (n == 0) return;
  topk_weights_backward_kernel<<<grid_for(n), kThreads, 0, compute_stream()>>>(
      d_topk_w.data<float>(), scores.data<float>(), topk_idx.data<int32_t>(), n, e, k, normalize, routed_scale,
      bad_expert, dscores.data<float>());
  EG_CUDA_CHECK_LAUNCH("topk_weights_backward_kernel");
}

double moe_aux_loss(const Tensor& scores, const Tensor& topk_idx, float grad_scale, Tensor& dscores) {
  check_on_cuda("moe_aux_loss", scores, topk_idx, dscores);
  checks::moe_aux_loss(scores, topk_idx, dscores);
  const int64_t n = scores.rows(), e = scores.cols(), k = topk_idx.cols();
  Tensor counts = Tensor::empty({e}, DType::I32, Device::CUDA);
  const unsigned long long* bad_expert = check_experts(topk_idx, e, "moe_aux_loss", &counts);
  if (n == 0) return 0.0;
  cudaStream_t stream = compute_stream();
  const int64_t n_chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
  Tensor row_sum = device_doubles(n), partial = device_doubles(n_chunks * e), f = device_doubles(e),
         terms = device_doubles(e);
  row_sums_kernel<<<grid_for_rows(n), kThreads, 0, stream>>>(scores.data<float>(), n, e, doubles(row_sum));
  EG_CUDA_CHECK_LAUNCH("row_sums_kernel");
  share_partials_kernel<<<static_cast<unsigned>(std::min<int64_t>(n_chunks, 65536)), kThreads, 0, stream>>>(
      scores.data<float>(), doubles(row_sum), n, e, doubles(partial));
  EG_CUDA_CHECK_LAUNCH("share_partials_kernel");
  aux_loss_terms_kernel<<<grid_for(e), kThreads, 0, stream>>>(counts.data<int32_t>(), doubles(partial), n, k, e,
                                                               doubles(f), doubles(terms));
  EG_CUDA_CHECK_LAUNCH("aux_loss_terms_kernel");
  aux_loss_backward_kernel<<<grid_for_rows(n), kThreads, 0, stream>>>(scores.data<float>(), doubles(row_sum),
                                                                       doubles(f), n, e, grad_scale, bad_expert,
                                                                       dscores.data<float>());
  EG_CUDA_CHECK_LAUNCH("aux_loss_backward_kernel");
  return sum_to_host(doubles(terms), e);  // the wait raises a bad expert's error before returning
}

double router_z_loss(const Tensor& logits, float grad_scale, Tensor& dlogits) {
  check_on_cuda("router_z_loss", logits, dlogits);
  checks::router_z_loss(logits, dlogits);
  const int64_t n = logits.rows(), e = logits.cols();
  if (n == 0) return 0.0;
  cudaStream_t stream = compute_stream();
  const Tensor row_loss = device_doubles(n);
  z_loss_kernel<<<grid_for_rows(n), kThreads, 0, stream>>>(logits.data<float>(), n, e, grad_scale,
                                                           doubles(row_loss), dlogits.data<float>());
  EG_CUDA_CHECK_LAUNCH("z_loss_kernel");
  return sum_to_host(doubles(row_loss), n);
}

}  // namespace engram::kernels::cuda
