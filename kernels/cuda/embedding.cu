// Row gather and its deterministic gradient reductions on the GPU, the CUDA side of
// kernels/embedding.h. The reductions never add floats atomically: positions are stably sorted by id
// (CUB radix sort), each distinct id becomes a segment of ascending positions, and one thread per
// (segment, column; 4 columns where the rows allow) adds the segment's rows in that order, exactly as
// the CPU does, so the results equal the CPU's bit for bit. embedding_scatter_add's dout may be bf16
// (the MoE's row gradients, as its expert products write them): added as the floats it holds.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include <climits>
#include <type_traits>

#include "kernels/checks.h"
#include "kernels/cuda/common.cuh"
#include "kernels/embedding.h"

namespace engram::kernels::cuda {

namespace {

// kVec elements of a row: one at a time, 16 bytes of a copy (In == Out), or 4 floats to bf16.
template <int kVec, class In, class Out>
__device__ inline void copy_elements(const In* src, Out* dst) {
  if constexpr (kVec == 1) {
    *dst = static_cast<Out>(*src);  // to bf16: nearest even
  } else if constexpr (std::is_same_v<In, Out>) {
    static_assert(kVec * sizeof(In) == 16);
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
    store_floats<kVec>(dst, load_floats<kVec>(src));
  }
}

// One warp per output row: the id is read once and the row copied with coalesced lane-strided
// reads (an element-wise grid would divide by c for every element), kVec elements per lane and step.
template <int kVec, class Id, class In, class Out>
__global__ void gather_kernel(const In* table, const Id* ids, int64_t n_rows, int64_t c, Out* out, int64_t n_ids,
                              unsigned long long* bad_id) {
  for (int64_t i = first_warp_row(); i < n_ids; i += warp_row_stride()) {
    const int64_t id = ids[i];
    if (id < 0 || id >= n_rows) {
      if (lane_id() == 0) report_bad_position(bad_id, i);
      continue;
    }
    const In* src = table + id * c;
    Out* dst = out + i * c;
    for (int64_t e = int64_t{lane_id()} * kVec; e < c; e += kWarpSize * kVec) copy_elements<kVec>(src + e, dst + e);
  }
}

// keys[i] = ids[i], positions[i] = i; ids outside [0, limit) are reported.
template <class Id>
__global__ void keys_kernel(const Id* ids, int64_t limit, int64_t n, int64_t* keys, int32_t* positions,
                            unsigned long long* bad_id) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t id = ids[i];
    if (id < 0 || id >= limit) report_bad_position(bad_id, i);
    keys[i] = id;
    positions[i] = static_cast<int32_t>(i);
  }
}

// Positions grouped by id: segment u holds positions sorted[starts[u] .. starts[u] + counts[u]), ascending.
struct Segments {
  Tensor sorted_positions;  // i32 [n]
  Tensor ids;               // i64 [U], ascending
  Tensor starts, counts;    // i32 [U]
  int64_t count = 0;        // U
  int64_t bad_position = -1;  // first position whose id was outside [0, limit), −1 if none
};

// Scratch bytes on the device (CUB's temporary storage).
Tensor scratch(size_t bytes) {
  return Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::I64, Device::CUDA);
}

Segments segments_by_id(const Tensor& ids, int64_t limit) {
  const int64_t n = ids.numel();
  EG_ASSERT(n < INT_MAX, "segments_by_id: ", n, " ids; at most 2^31 − 2 are supported");
  const int items = static_cast<int>(n);
  cudaStream_t stream = compute_stream();
  Tensor keys = Tensor::empty({n}, DType::I64, Device::CUDA);
  Tensor positions = Tensor::empty({n}, DType::I32, Device::CUDA);
  FirstBadPosition bad_id;
  checks::visit_ids(ids, "ids", [&](const auto* id) {
    keys_kernel<<<grid_for(n), kThreads, 0, stream>>>(id, limit, n, keys.data<int64_t>(), positions.data<int32_t>(),
                                                      bad_id.slot());
  });
  EG_CUDA_CHECK_LAUNCH("keys_kernel");
  Segments s;
  s.bad_position = bad_id.position();
  if (s.bad_position >= 0) return s;

  // Only the bits a valid id can use: fewer radix passes for small tables.
  int end_bit = 1;
  while (end_bit < 63 && (int64_t{1} << end_bit) < limit) ++end_bit;
  Tensor sorted_keys = Tensor::empty({n}, DType::I64, Device::CUDA);
  s.sorted_positions = Tensor::empty({n}, DType::I32, Device::CUDA);
  size_t bytes = 0;
  EG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys.data<int64_t>(), sorted_keys.data<int64_t>(),
                                                positions.data<int32_t>(), s.sorted_positions.data<int32_t>(), items,
                                                0, end_bit, stream));
  Tensor sort_scratch = scratch(bytes);
  EG_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_scratch.raw(), bytes, keys.data<int64_t>(),
                                                sorted_keys.data<int64_t>(), positions.data<int32_t>(),
                                                s.sorted_positions.data<int32_t>(), items, 0, end_bit, stream));

  Tensor unique_ids = Tensor::empty({n}, DType::I64, Device::CUDA);
  Tensor counts = Tensor::empty({n}, DType::I32, Device::CUDA);
  Tensor run_count = Tensor::empty({1}, DType::I32, Device::CUDA);
  bytes = 0;
  EG_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(nullptr, bytes, sorted_keys.data<int64_t>(),
                                                   unique_ids.data<int64_t>(), counts.data<int32_t>(),
                                                   run_count.data<int32_t>(), items, stream));
  Tensor encode_scratch = scratch(bytes);
  EG_CUDA_CHECK(cub::DeviceRunLengthEncode::Encode(encode_scratch.raw(), bytes, sorted_keys.data<int64_t>(),
                                                   unique_ids.data<int64_t>(), counts.data<int32_t>(),
                                                   run_count.data<int32_t>(), items, stream));
  s.count = run_count.to_vector<int32_t>()[0];  // waits: the output's size depends on the data
  s.ids = unique_ids.slice(0, s.count);
  s.counts = counts.slice(0, s.count);
  s.starts = Tensor::empty({s.count}, DType::I32, Device::CUDA);
  bytes = 0;
  EG_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, s.counts.data<int32_t>(), s.starts.data<int32_t>(),
                                              static_cast<int>(s.count), stream));
  Tensor scan_scratch = scratch(bytes);
  EG_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scan_scratch.raw(), bytes, s.counts.data<int32_t>(),
                                              s.starts.data<int32_t>(), static_cast<int>(s.count), stream));
  return s;
}

// For each segment u (grid-stride over blocks) and column j (threads, kVec columns each):
// out[row(u), j] = start + Σ_{s in segment u, ascending} src[sorted[s], j], where row(u) = ids[u] and
// start = out[row(u), j] when accumulating into a table, else row(u) = u and start = 0.
template <int kVec, class In>
__global__ void segment_sum_kernel(const In* src, int64_t c, const int32_t* sorted, const int32_t* starts,
                                   const int32_t* counts, const int64_t* ids, int64_t n_segments, bool into_table,
                                   float* out) {
  for (int64_t u = blockIdx.x; u < n_segments; u += gridDim.x) {
    float* dst = out + (into_table ? ids[u] : u) * c;
    const int32_t begin = starts[u], end = begin + counts[u];
    for (int64_t j = int64_t{threadIdx.x} * kVec; j < c; j += int64_t{blockDim.x} * kVec) {
      Floats<kVec> acc = into_table ? load_floats<kVec>(dst + j) : Floats<kVec>{};
      for (int32_t s = begin; s < end; ++s) {
        const Floats<kVec> x = load_floats<kVec>(src + int64_t{sorted[s]} * c + j);
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc.v[e] += x.v[e];
      }
      store_floats<kVec>(dst + j, acc);
    }
  }
}

void segment_sum(const Tensor& src, int64_t c, const Segments& s, bool into_table, Tensor& out) {
  if (s.count == 0 || c == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(s.count, 65536));
  const bool vectors = four_at_a_time(c, src, out);
  with_f32_or_bf16(src, "segment_sum src", [&](auto* rows) {
    using In = std::remove_pointer_t<decltype(rows)>;
    const auto kernel = vectors ? segment_sum_kernel<4, In> : segment_sum_kernel<1, In>;
    kernel<<<blocks, kThreads, 0, compute_stream()>>>(rows, c, s.sorted_positions.data<int32_t>(),
                                                      s.starts.data<int32_t>(), s.counts.data<int32_t>(),
                                                      s.ids.data<int64_t>(), s.count, into_table, out.data<float>());
  });
  EG_CUDA_CHECK_LAUNCH("segment_sum_kernel");
}

}  // namespace

void embedding_gather(const Tensor& table, const Tensor& ids, Tensor& out) {
  check_on_cuda("embedding_gather", table, ids, out);
  // out may also be bf16 (the MoE gathers its experts' operands straight into the dtype their
  // products take), and then the table too (the MoE's input, written in that dtype by its norm):
  // its rows are copied as they are.
  const bool bf16_out = out.dtype() == DType::BF16, bf16_table = bf16_out && table.dtype() == DType::BF16;
  checks::table_rows_per_id(table, ids, out, "embedding_gather", f32_or_bf16(out),
                            bf16_table ? DType::BF16 : DType::F32);
  const int64_t n_rows = table.dim(0), c = table.dim(1);
  if (out.numel() == 0) return;
  FirstBadPosition bad_id;
  const auto launch = [&](const auto* rows, const auto* id, auto* o) {
    using In = std::remove_cv_t<std::remove_pointer_t<decltype(rows)>>;
    using Out = std::remove_pointer_t<decltype(o)>;
    using IdType = std::remove_cv_t<std::remove_pointer_t<decltype(id)>>;
    constexpr int kVec = std::is_same_v<In, Out> ? 16 / sizeof(In) : 4;
    const auto kernel = c % kVec == 0 && aligned_16(table) && aligned_16(out) ? gather_kernel<kVec, IdType, In, Out>
                                                                              : gather_kernel<1, IdType, In, Out>;
    kernel<<<grid_for_rows(ids.numel()), kThreads, 0, compute_stream()>>>(rows, id, n_rows, c, o, ids.numel(),
                                                                          bad_id.slot());
  };
  checks::visit_ids(ids, "embedding_gather ids", [&](const auto* id) {
    if (bf16_table)
      return launch(static_cast<const __nv_bfloat16*>(table.raw()), id, static_cast<__nv_bfloat16*>(out.raw()));
    with_f32_or_bf16(out, "embedding_gather out", [&](auto* o) { launch(table.data<float>(), id, o); });
  });
  EG_CUDA_CHECK_LAUNCH("gather_kernel");
  const int64_t i = bad_id.position();
  if (i >= 0) checks::id_outside_table(integer_at(ids, i), i, n_rows);
}

void embedding_scatter_add(const Tensor& dout, const Tensor& ids, Tensor& dtable) {
  check_on_cuda("embedding_scatter_add", dout, ids, dtable);
  checks::table_rows_per_id(dtable, ids, dout, "embedding_scatter_add", f32_or_bf16(dout));
  const int64_t n_rows = dtable.dim(0), c = dtable.dim(1);
  if (ids.numel() == 0) return;
  const Segments s = segments_by_id(ids, n_rows);
  if (s.bad_position >= 0) checks::id_outside_table(integer_at(ids, s.bad_position), s.bad_position, n_rows);
  segment_sum(dout, c, s, /*into_table=*/true, dtable);
}

RowGrads reduce_rows(const Tensor& dout, const Tensor& ids) {
  check_on_cuda("reduce_rows", dout, ids);
  const int64_t c = dout.cols();
  checks::rows_per_id(dout, ids, c, "reduce_rows dout");
  if (ids.numel() == 0)
    return {Tensor::empty({0}, DType::I64, Device::CUDA), Tensor::empty({0, c}, DType::F32, Device::CUDA)};
  const Segments s = segments_by_id(ids, INT64_MAX);
  EG_CHECK(s.bad_position < 0, "row id ", integer_at(ids, s.bad_position), " at position ", s.bad_position,
           " is negative");
  RowGrads out{s.ids, Tensor::empty({s.count, c}, DType::F32, Device::CUDA)};
  segment_sum(dout, c, s, /*into_table=*/false, out.values);
  return out;
}

}  // namespace engram::kernels::cuda
