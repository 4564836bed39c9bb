// Token permutation for experts on the GPU, the CUDA side of kernels/permute.h. sort_by_expert is a
// stable CUB radix sort of the flat assignments by expert, so each expert's block keeps ascending
// a = t·K + k exactly as the CPU's counting sort does; the offsets are lower bounds in the sorted
// experts, copied to the host (the grouped GEMMs size their groups from them). The combine runs one
// thread per (token, column) over the slots in order, and its backward one warp per assignment, so
// y and d_expert_out equal the CPU's bit for bit (__fmul_rn keeps nvcc from fusing the products)
// and d_topk_w's double dot product differs from the CPU's only in summation order.
#include <cub/device/device_radix_sort.cuh>

#include <climits>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/permute.h"

namespace engram::kernels::cuda {

namespace {

// assignment[a] = a, and the first a naming an expert outside [0, n_experts) is reported.
__global__ void assignments_kernel(const int32_t* expert, int64_t total, int n_experts, int32_t* assignment,
                                   unsigned long long* bad_expert) {
  for (int64_t a = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; a < total; a += int64_t{gridDim.x} * blockDim.x) {
    if (expert[a] < 0 || expert[a] >= n_experts) report_bad_position(bad_expert, a);
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

// Fails as the CPU does (an internal error) on a position outside [0, n_assignments).
__global__ void positions_kernel(const int32_t* position, int64_t n_assignments, unsigned long long* bad_position) {
  for (int64_t a = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; a < n_assignments;
       a += int64_t{gridDim.x} * blockDim.x)
    if (position[a] < 0 || position[a] >= n_assignments) report_bad_position(bad_position, a);
}

void check_positions(const Tensor& position, int64_t n_assignments, const char* kernel) {
  if (n_assignments == 0) return;
  FirstBadPosition bad_position;
  positions_kernel<<<grid_for(n_assignments), kThreads, 0, compute_stream()>>>(position.data<int32_t>(),
                                                                               n_assignments, bad_position.slot());
  EG_CUDA_CHECK_LAUNCH("positions_kernel");
  const int64_t a = bad_position.position();
  if (a >= 0) checks::position_outside(integer_at(position, a), n_assignments, kernel);
}

// y[t, j] = Σ_k w[t, k] · expert_out[position[t·K + k], j], from 0 and in slot order as on the CPU.
__global__ void combine_kernel(const float* expert_out, const int32_t* position, const float* topk_w, int64_t n,
                               int64_t k, int64_t d, float* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n * d; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / d, j = i % d;
    float acc = 0.0f;
    for (int64_t slot = 0; slot < k; ++slot)
      acc += __fmul_rn(topk_w[t * k + slot], expert_out[position[t * k + slot] * d + j]);
    y[i] = acc;
  }
}

// One warp per assignment a (token t = a / K, row p = position[a]): d_expert_out[p] = w[a]·dy[t] and
// d_topk_w[a] = <dy[t], expert_out[p]> in double (products of floats, exact in double).
__global__ void combine_backward_kernel(const float* dy, const float* expert_out, const int32_t* position,
                                        const float* topk_w, int64_t n_assignments, int64_t k, int64_t d,
                                        float* d_expert_out, float* d_topk_w) {
  for (int64_t a = first_warp_row(); a < n_assignments; a += warp_row_stride()) {
    const float* g = dy + (a / k) * d;
    const int64_t p = position[a];
    const float* row = expert_out + p * d;
    float* drow = d_expert_out + p * d;
    const float w = topk_w[a];
    double dot = 0.0;
    for (int64_t j = lane_id(); j < d; j += kWarpSize) {
      drow[j] = w * g[j];
      dot += static_cast<double>(g[j]) * row[j];
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
  FirstBadPosition bad_expert;
  assignments_kernel<<<grid_for(total), kThreads, 0, stream>>>(expert, total, n_experts,
                                                               assignment.data<int32_t>(), bad_expert.slot());
  EG_CUDA_CHECK_LAUNCH("assignments_kernel");

  // Stable: equal experts keep ascending a. Only the bits a valid expert uses (fewer passes); an
  // invalid id sorts somewhere harmless and is reported below, before anything is returned.
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
  out.offsets = offsets.to_vector<int64_t>();  // waits for the device: the one sync of the sort
  const int64_t a = bad_expert.position();
  if (a >= 0) checks::assignment_outside_experts(a, integer_at(topk_idx, a), n_experts);
  return out;
}

void combine_expert_outputs(const Tensor& expert_out, const Tensor& position, const Tensor& topk_w, Tensor& y) {
  check_on_cuda("combine_expert_outputs", expert_out, position, topk_w, y);
  const auto [n, k, d] = checks::combine_expert_outputs(expert_out, position, topk_w, y);
  check_positions(position, n * k, "combine_expert_outputs");
  if (n * d == 0) return;
  combine_kernel<<<grid_for(n * d), kThreads, 0, compute_stream()>>>(
      expert_out.data<float>(), position.data<int32_t>(), topk_w.data<float>(), n, k, d, y.data<float>());
  EG_CUDA_CHECK_LAUNCH("combine_kernel");
}

void combine_expert_outputs_backward(const Tensor& dy, const Tensor& expert_out, const Tensor& position,
                                     const Tensor& topk_w, Tensor& d_expert_out, Tensor& d_topk_w) {
  check_on_cuda("combine_expert_outputs_backward", dy, expert_out, position, topk_w, d_expert_out, d_topk_w);
  const auto [n, k, d] =
      checks::combine_expert_outputs_backward(dy, expert_out, position, topk_w, d_expert_out, d_topk_w);
  check_positions(position, n * k, "combine_expert_outputs_backward");
  if (n * k == 0) return;
  combine_backward_kernel<<<grid_for_rows(n * k), kThreads, 0, compute_stream()>>>(
      dy.data<float>(), expert_out.data<float>(), position.data<int32_t>(), topk_w.data<float>(), n * k, k, d,
      d_expert_out.data<float>(), d_topk_w.data<float>());
  EG_CUDA_CHECK_LAUNCH("combine_backward_kernel");
}

}  // namespace engram::kernels::cuda
