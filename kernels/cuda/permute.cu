// Token permutation for experts on the GPU, the CUDA side of kernels/permute.h. sort_by_expert is a
// stable CUB radix sort of the flat assignments by expert, so each expert's block keeps ascending
// a = t·K + k exactly as the CPU's counting sort does; the offsets are lower bounds in the sorted
// experts, copied to the host (the grouped GEMMs size their groups from them). The combine runs one
// thread per (token, 4 columns where the tensors allow) over the slots in order, and its backward one
// warp per assignment, so y and d_expert_out equal the CPU's bit for bit (__fmul_rn keeps nvcc from
// fusing the products) and d_topk_w's double dot product differs from the CPU's only in summation
// order. expert_out may be bf16 (as the expert products wrote it): read as the floats it holds, so
// the results are those of its values in f32. Indices are checked without a wait of their own
// (kernels/cuda/deferred_errors.h): sort_by_expert raises a bad expert at its offsets copy, which
// waits anyway; the combine's positions (made by sort_by_expert) are reported at the host's next
// wait, and the combine kernels write nothing when one is bad.
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <type_traits>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/permute.h"

namespace engram::kernels::cuda {

namespace {

// assignment[a] = a, and the first a naming an expert outside [0, n_experts) is reported.
__global__ void assignments_kernel(const int32_t* expert, int64_t total, int n_experts, int32_t* assignment,
                                   unsigned long long* bad_expert) {
  for (int64_t a = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; a < total; a += int64_t{gridDim.x} * blockDim.x) {
    if (expert[a] < 0 || expert[a] >= n_experts) report_bad_value(bad_expert, a, expert[a]);
    assignment[a] = static_cast<int32_t>(a);
  }
}

// offsets[e] = the number of sorted experts below e (a lower bound), e in [0, n_experts].
__global__ void offsets_kernel(const int32_t* sorted_expert, int64_t total, int n_experts, int64_t* offsets) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e <= n_experts;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t lo = 0, hi = total;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sorted_expert[mid] < e) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    offsets[e] = lo;
  }
}

// The assignment at sorted position p is a = sorted_assignment[p]: its token is a / K, its position p.
__global__ void scatter_kernel(const int32_t* sorted_assignment, int64_t total, int64_t k, int32_t* sorted_token,
                               int32_t* position) {
  for (int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; p < total; p += int64_t{gridDim.x} * blockDim.x) {
    const int32_t a = sorted_assignment[p];
    sorted_token[p] = static_cast<int32_t>(a / k);
    position[a] = static_cast<int32_t>(p);
  }
}

void report_assignment_outside(const char*, int64_t assignment, int64_t expert, int64_t n_experts) {
  checks::assignment_outside_experts(assignment, expert, static_cast<int>(n_experts));
}

// Reports the first position outside [0, n_assignments) (with its value).
__global__ void positions_kernel(const int32_t* position, int64_t n_assignments, unsigned long long* bad_position) {
  for (int64_t a = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; a < n_assignments;
       a += int64_t{gridDim.x} * blockDim.x)
    if (position[a] < 0 || position[a] >= n_assignments) report_bad_value(bad_position, a, position[a]);
}

void report_position_outside(const char* kernel, int64_t, int64_t position, int64_t n_assignments) {
  checks::position_outside(position, n_assignments, kernel);
}

// Checks, without waiting, that the positions lie in [0, n_assignments) (the CPU's internal error is
// raised at the next wait). Returns the check's device slot, for the kernels that must not run on a
// bad position.
const unsigned long long* check_positions(const Tensor& position, int64_t n_assignments, const char* kernel) {
  unsigned long long* bad_position = defer_bad_value_check(report_position_outside, kernel, n_assignments,
                                                           n_assignments);
  if (n_assignments == 0) return bad_position;
  positions_kernel<<<grid_for(n_assignments), kThreads, 0, compute_stream()>>>(position.data<int32_t>(),
                                                                               n_assignments, bad_position);
  EG_CUDA_CHECK_LAUNCH("positions_kernel");
  return bad_position;
}

// y[t, j] = Σ_k w[t, k] · expert_out[position[t·K + k], j] (w = 1 without topk_w), from 0 (from
// y[t, j] when accumulating) and in slot order as on the CPU; nothing when a position is bad. One thread per kVec
// columns of a token.
template <int kVec, class In>
__global__ void combine_kernel(const In* expert_out, const int32_t* position, const float* topk_w, int64_t n, int64_t k,
                               int64_t d, bool accumulate, const unsigned long long* bad_position, float* y) {
  if (bad_value_reported(bad_position)) return;
  const int64_t vectors = n * d / kVec;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vectors;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i * kVec / d, j = i * kVec % d;
    Floats<kVec> acc = accumulate ? load_floats<kVec>(y + t * d + j) : Floats<kVec>{};
    for (int64_t slot = 0; slot < k; ++slot) {
      const float w = topk_w ? topk_w[t * k + slot] : 1.0f;
      const Floats<kVec> x = load_floats<kVec>(expert_out + position[t * k + slot] * d + j);
#pragma unroll
      for (int c = 0; c < kVec; ++c) acc.v[c] += __fmul_rn(w, x.v[c]);
    }
    store_floats<kVec>(y + t * d + j, acc);
  }
}

// One warp per assignment a (token t = a / K, row p = position[a]): d_expert_out[p] = w[a]·dy[t] and
// d_topk_w[a] = <dy[t], expert_out[p]> in double (products of floats, exact in double); nothing when a
// position is bad. Lanes take kVec columns at a time.
template <int kVec, class In, class Out>
__global__ void combine_backward_kernel(const float* dy, const In* expert_out, const int32_t* position,
                                        const float* topk_w, int64_t n_assignments, int64_t k, int64_t d,
                                        const unsigned long long* bad_position, Out* d_expert_out, float* d_topk_w) {
  if (bad_value_reported(bad_position)) return;
  for (int64_t a = first_warp_row(); a < n_assignments; a += warp_row_stride()) {
    const float* g = dy + (a / k) * d;
    const int64_t p = position[a];
    const In* row = expert_out + p * d;
    Out* drow = d_expert_out + p * d;
    const float w = topk_w[a];
    double dot = 0.0;
    for (int64_t j = int64_t{lane_id()} * kVec; j < d; j += kWarpSize * kVec) {
      const Floats<kVec> gj = load_floats<kVec>(g + j), xj = load_floats<kVec>(row + j);
      Floats<kVec> dj;
#pragma unroll
      for (int c = 0; c < kVec; ++c) {
        dj.v[c] = w * gj.v[c];
        dot += static_cast<double>(gj.v[c]) * xj.v[c];
      }
      store_floats<kVec>(drow + j, dj);  // to bf16: nearest even
    }
    dot = warp_reduce(dot, Sum{});
    if (lane_id() == 0) d_topk_w[a] = static_cast<float>(dot);
  }
}

}  // namespace

ExpertSort sort_by_expert(const Tensor& topk_idx, int n_experts) {
  check_on_cuda("sort_by_expert", topk_idx);
  checks::sort_by_expert(topk_idx, n_experts);
  const int64_t total = topk_idx.numel(), k = topk_idx.cols();
  ExpertSort out{Tensor::empty({total}, DType::I32, Device::CUDA), Tensor::empty({total}, DType::I32, Device::CUDA),
                 std::vector<int64_t>(n_experts + 1, 0)};
  if (total == 0) return out;
  EG_ASSERT(total < INT_MAX, "sort_by_expert: ", total, " assignments; at most 2^31 − 2 are supported");
  cudaStream_t stream = compute_stream();
  const int32_t* expert = topk_idx.data<int32_t>();
  Tensor assignment = Tensor::empty({total}, DType::I32, Device::CUDA);
  unsigned long long* bad_expert =
      defer_bad_value_check(report_assignment_outside, "sort_by_expert", n_experts, total);
  assignments_kernel<<<grid_for(total), kThreads, 0, stream>>>(expert, total, n_experts,
                                                               assignment.data<int32_t>(), bad_expert);
  EG_CUDA_CHECK_LAUNCH("assignments_kernel");

  // Stable: equal experts keep ascending a. Only the bits a valid expert uses (fewer passes); an
  // invalid id sorts somewhere harmless and is raised by the wait below, before anything is returned.
  int end_bit = 1;
  while ((int64_t{1} << end_bit) < n_experts) ++end_bit;
  Tensor sorted_expert = Tensor::empty({total}, DType::I32, Device::CUDA);
  Tensor sorted_assignment = Tensor::empty({total}, DType::I32, Device::CUDA);
  const int items = static_cast<int>(total);
  size_t bytes = 0;
  EG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, expert, sorted_expert.data<int32_t>(),
                                                assignment.data<int32_t>(), sorted_assignment.data<int32_t>(),
                                                items, 0, end_bit, stream));
  Tensor scratch = Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::I64, Device::CUDA);
  EG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.raw(), bytes, expert, sorted_expert.data<int32_t>(),
                                                assignment.data<int32_t>(), sorted_assignment.data<int32_t>(),
                                                items, 0, end_bit, stream));

  scatter_kernel<<<grid_for(total), kThreads, 0, stream>>>(sorted_assignment.data<int32_t>(), total, k,
                                                           out.sorted_token.data<int32_t>(),
                                                           out.position.data<int32_t>());
  EG_CUDA_CHECK_LAUNCH("scatter_kernel");
  Tensor offsets = Tensor::empty({n_experts + 1}, DType::I64, Device::CUDA);
  offsets_kernel<<<grid_for(n_experts + 1), kThreads, 0, stream>>>(sorted_expert.data<int32_t>(), total, n_experts,
                                                                   offsets.data<int64_t>());
  EG_CUDA_CHECK_LAUNCH("offsets_kernel");
  // The one wait of the sort; it raises a bad expert (and any error deferred before it).
  copy_to_host_and_wait(out.offsets.data(), offsets.raw(), offsets.nbytes());
  return out;
}

void combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, Tensor& y,
                            bool accumulate) {
  check_on_cuda("combine_expert_outputs", expert_out, position, topk_w, y);
  const auto [n, k, d] = checks::combine_expert_outputs(expert_out, position, topk_w, y, f32_or_bf16(expert_out));
  const unsigned long long* bad_position = check_positions(position, n * k, "combine_expert_outputs");
  if (n * d == 0) return;
  const bool vectors = four_at_a_time(d, expert_out, y);
  with_f32_or_bf16(expert_out, "combine_expert_outputs expert_out", [&](auto* rows) {
    using In = std::remove_pointer_t<decltype(rows)>;
    const auto kernel = vectors ? combine_kernel<4, In> : combine_kernel<1, In>;
    kernel<<<grid_for(n * d / (vectors ? 4 : 1)), kThreads, 0, compute_stream()>>>(
        rows, position.data<int32_t>(), topk_w.defined() ? topk_w.data<float>() : nullptr, n, k, d, accumulate,
        bad_position, y.data<float>());
  });
  EG_CUDA_CHECK_LAUNCH("combine_kernel");
}

void combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                     const Tensor& topk_w, Tensor& d_expert_out, Tensor& d_topk_w) {
  check_on_cuda("combine_expert_outputs_backward", dy, expert_out, position, topk_w, d_expert_out, d_topk_w);
  // d_expert_out may also be bf16 (the expert products take it: kernels::matmul_operand_dtype), as may
  // expert_out (they wrote it).
  const auto [n, k, d] = checks::combine_expert_outputs_backward(
      dy, expert_out, position, topk_w, d_expert_out, d_topk_w, f32_or_bf16(d_expert_out), f32_or_bf16(expert_out));
  const unsigned long long* bad_position = check_positions(position, n * k, "combine_expert_outputs_backward");
  if (n * k == 0) return;
  const bool vectors = four_at_a_time(d, dy, expert_out, d_expert_out);
  with_f32_or_bf16(expert_out, "combine_expert_outputs_backward expert_out", d_expert_out,
                   "combine_expert_outputs_backward d_expert_out", [&](auto* rows, auto* d_out) {
                     using In = std::remove_pointer_t<decltype(rows)>;
                     using Out = std::remove_pointer_t<decltype(d_out)>;
                     const auto kernel =
                         vectors ? combine_backward_kernel<4, In, Out> : combine_backward_kernel<1, In, Out>;
                     kernel<<<grid_for_rows(n * k), kThreads, 0, compute_stream()>>>(
                         dy.data<float>(), rows, position.data<int32_t>(), topk_w.data<float>(), n * k, k, d,
                         bad_position, d_out, d_topk_w.data<float>());
                   });
  EG_CUDA_CHECK_LAUNCH("combine_backward_kernel");
}

}  // namespace engram::kernels::cuda
