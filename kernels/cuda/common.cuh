#pragma once
// Shared pieces of the CUDA kernels (included by kernels/cuda/*.cu only): launch shapes, argument
// checks, block reductions, fixed-order column sums and the report of invalid indices found on the
// device (at once, or deferred to the next wait: kernels/cuda/deferred_errors.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/deferred_errors.h"
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

// Calls launch(data) with t's data as float* or __nv_bfloat16*: the two dtypes of an output that
// only products read next, or of an input that only products wrote, which are in the dtype the
// products take (kernels::matmul_operand_dtype; static_cast<__nv_bfloat16> rounds to nearest even).
template <class Launch>
void with_f32_or_bf16(const Tensor& t, const char* what, Launch&& launch) {
  if (t.dtype() == DType::BF16) return launch(static_cast<__nv_bfloat16*>(t.raw()));
  EG_ASSERT(t.dtype() == DType::F32, what, " must be f32 or bf16, got ", t.describe());
  launch(t.data<float>());
}
// The same over two or three tensors: launch(data, data2[, data3]), one instance per dtype combination.
template <class Launch>
void with_f32_or_bf16(const Tensor& t, const char* what, const Tensor& t2, const char* what2, Launch&& launch) {
  with_f32_or_bf16(t, what, [&](auto* p) { with_f32_or_bf16(t2, what2, [&](auto* p2) { launch(p, p2); }); });
}
template <class Launch>
void with_f32_or_bf16(const Tensor& t, const char* what, const Tensor& t2, const char* what2, const Tensor& t3,
                      const char* what3, Launch&& launch) {
  with_f32_or_bf16(t, what, [&](auto* p) {
    with_f32_or_bf16(t2, what2, t3, what3, [&](auto* p2, auto* p3) { launch(p, p2, p3); });
  });
}
// The dtype a shared check (kernels/checks.h) expects of a tensor that may be f32 or bf16: its own
// if bf16, else f32 (which a wrong dtype's message then names).
inline DType f32_or_bf16(const Tensor& t) { return t.dtype() == DType::BF16 ? DType::BF16 : DType::F32; }

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Of ranges laid end to end from starts[0] <= value (starts ascending, count of them), the last
// whose start is at most value, by bisection: the group or tensor a block's index falls in.
template <class T>
__device__ inline int last_start_at_most(const T* starts, int count, T value) {
  int i = 0;
  for (int hi = count; hi - i > 1;) {
    const int mid = (i + hi) / 2;
    if (starts[mid] <= value) {
      i = mid;
    } else {
      hi = mid;
    }
  }
  return i;
}

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

// Lets `kernel` take `bytes` of dynamic shared memory (beyond the default 48 KB needs opting in);
// kernels/cuda/dynamic_shared.cu remembers what each kernel was allowed, so launches after the first
// make no driver call.
void allow_dynamic_shared(const void* kernel, size_t bytes);

// Launches kernel on `grid` blocks of `threads` threads with `shared_bytes` of dynamic shared memory,
// on the compute stream.
template <class Kernel, class... Args>
void launch_with_shared(Kernel* kernel, dim3 grid, int threads, size_t shared_bytes, Args... args) {
  allow_dynamic_shared(reinterpret_cast<const void*>(kernel), shared_bytes);
  kernel<<<grid, threads, shared_bytes, compute_stream()>>>(args...);
}

// Kernels that stream float rows take kVec = 4 consecutive values at a time (one 16-byte access, or
// 8 bytes of bf16: a quarter of the loads and loop steps, four times the bytes in flight) where every
// tensor allows, else one; each value's arithmetic is the same either way, but a reduction over a
// row (RMSNorm's sums) adds in another order, so the path a call takes (from its tensors' alignment:
// the same for the same layout, so runs still repeat bitwise) can move those sums by rounding.
inline bool aligned_16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()) % 16 == 0; }
inline bool aligned_for_four(const Tensor& t) {  // 16 bytes of f32, 8 of bf16
  return reinterpret_cast<uintptr_t>(t.raw()) % (4 * dtype_size(t.dtype())) == 0;
}
template <class... T>
bool four_at_a_time(int64_t n, const T&... tensors) {  // n: the values of a row (or of a whole tensor)
  return n % 4 == 0 && (aligned_for_four(tensors) && ...);
}
template <int kVec>
struct Floats {
  static_assert(kVec == 1 || kVec == 4, "one value or one access of four");
  float v[kVec];
};
template <int kVec>
__device__ inline Floats<kVec> load_floats(const float* p) {
  Floats<kVec> x;
  if constexpr (kVec == 4) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    x.v[0] = f.x, x.v[1] = f.y, x.v[2] = f.z, x.v[3] = f.w;
  } else {
    x.v[0] = *p;
  }
  return x;
}
// bf16 values as the floats they are (a bf16 is the high half of its float), four in one 8-byte load.
template <int kVec>
__device__ inline Floats<kVec> load_floats(const __nv_bfloat16* p) {
  Floats<kVec> x;
  if constexpr (kVec == 4) {
    const uint2 bits = *reinterpret_cast<const uint2*>(p);  // the first value in the low half of bits.x
    x.v[0] = __uint_as_float(bits.x << 16), x.v[1] = __uint_as_float(bits.x & 0xffff0000u);
    x.v[2] = __uint_as_float(bits.y << 16), x.v[3] = __uint_as_float(bits.y & 0xffff0000u);
  } else {
    x.v[0] = __bfloat162float(*p);
  }
  return x;
}
// Two adjacent values (e.g. columns 2c, 2c + 1 of a tensor-core accumulator fragment) as one access:
// a float2, or a __nv_bfloat162 of their nearest-even roundings. `out` is 8- or 4-byte aligned.
__device__ inline void store_pair(float* out, float x, float y) { *reinterpret_cast<float2*>(out) = make_float2(x, y); }
__device__ inline void store_pair(__nv_bfloat16* out, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(out) = __floats2bfloat162_rn(x, y);
}
// As float, or as bf16 rounded to nearest even (4 bf16: two 4-byte stores).
template <int kVec, class Out>
__device__ inline void store_floats(Out* p, const Floats<kVec>& x) {
  static_assert(std::is_same_v<Out, float> || std::is_same_v<Out, __nv_bfloat16>);
  if constexpr (kVec == 4 && std::is_same_v<Out, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
  } else if constexpr (kVec == 4) {
    store_pair(p, x.v[0], x.v[1]);
    store_pair(p + 2, x.v[2], x.v[3]);
  } else {
    *p = static_cast<Out>(x.v[0]);
  }
}

// One warp per row, for kernels whose rows are short (a few hundred elements): kWarpsPerBlock rows
// per block, grid-stride beyond 2^16 blocks. The row loop is the same for the 32 lanes of a warp, so
// whole warps enter and leave it together, as the shuffles need.
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
inline unsigned grid_for_rows(int64_t n_rows) {
  return static_cast<unsigned>(std::clamp<int64_t>((n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, 65536));
}
__device__ inline int lane_id() { return static_cast<int>(threadIdx.x % kWarpSize); }
__device__ inline int64_t first_warp_row() { return blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / kWarpSize; }
__device__ inline int64_t warp_row_stride() { return int64_t{gridDim.x} * kWarpsPerBlock; }

// op over the warp's values (warp_reduce's fixed tree), returned to every lane.
template <class T, class Op>
__device__ T warp_all_reduce(T v, Op op) {
  return __shfl_sync(0xffffffffu, warp_reduce(v, op), 0);
}

// Device buffers of doubles live in 8-byte I64 tensors (there is no F64 dtype).
inline Tensor device_doubles(int64_t n) { return Tensor::empty({n}, DType::I64, Device::CUDA); }
inline double* doubles(const Tensor& t) { return static_cast<double*>(t.raw()); }

// *total = Σ values[0, n) on one block: each thread's strided share in index order, then block_reduce.
template <class T>
__global__ void sum_in_fixed_order_kernel(const T* values, int64_t n, T* total) {
  T sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += values[i];
  sum = block_reduce(sum, Sum{}, T{0});
  if (threadIdx.x == 0) *total = sum;
}

// Σ values[0, n) (device doubles) in a fixed order, so it repeats bitwise, copied to the host: waits
// for the device (and raises the errors deferred until then).
inline double sum_to_host(const double* values, int64_t n) {
  const Tensor total = device_doubles(1);
  sum_in_fixed_order_kernel<<<1, kThreads, 0, compute_stream()>>>(values, n, doubles(total));
  EG_CUDA_CHECK_LAUNCH("sum_in_fixed_order_kernel");
  double value = 0.0;
  copy_to_host_and_wait(&value, total.raw(), sizeof(value));
  return value;
}

// The first position (smallest index) at which a kernel found an invalid value, for the host to
// report as the CPU kernel would. Kernels call report_bad_position(slot, i); position() waits for
// the device (and raises the errors deferred until then), so only kernels that validate user data
// (ids, targets) use it; indices made on the device are checked by defer_bad_value_check.
class FirstBadPosition {
 public:
  FirstBadPosition() : slot_(Tensor::empty({1}, DType::I64, Device::CUDA)) {
    EG_CUDA_CHECK(cudaMemsetAsync(slot_.raw(), 0xff, sizeof(unsigned long long), compute_stream()));
  }
  unsigned long long* slot() const { return static_cast<unsigned long long*>(slot_.raw()); }
  int64_t position() const {  // −1 when every position was valid
    unsigned long long value = 0;
    copy_to_host_and_wait(&value, slot(), sizeof(value));
    return value == ~0ull ? -1 : static_cast<int64_t>(value);
  }

 private:
  Tensor slot_;
};

__device__ inline void report_bad_position(unsigned long long* slot, int64_t i) {
  atomicMin(slot, static_cast<unsigned long long>(i));
}

// Records that an index argument holds `value` at `position` (< 2^32 − 1) into a slot from
// defer_bad_value_check; the smallest position wins, whatever the order of the reports.
__device__ inline void report_bad_value(unsigned long long* slot, int64_t position, int32_t value) {
  atomicMin(slot, (static_cast<unsigned long long>(position) << 32) | static_cast<uint32_t>(value));
}

// Whether a kernel launched earlier on the stream reported into `slot`: the kernels that would read
// the bad indices then write nothing, as the CPU kernel throws before writing anything.
__device__ inline bool bad_value_reported(const unsigned long long* slot) { return *slot != kNoBadValue; }

// Element `position` of an integer tensor (i32 or i64), read back for an error message.
inline int64_t integer_at(const Tensor& t, int64_t position) {
  const Tensor one = t.view({-1}).slice(position, position + 1);
  return t.dtype() == DType::I32 ? one.to_vector<int32_t>()[0] : one.to_vector<int64_t>()[0];
}

// Column sums over many rows (bias and norm gradients, the conv's dw) in a fixed order, in double:
// the rows are cut into chunks whose size depends on the row count only; one thread per (chunk,
// column) sums its chunk's rows in ascending order into a scratch buffer, then one thread per column
// adds the chunks in ascending order and adds the float-rounded total into out. No atomics, so the
// result repeats bitwise, and a sum over 16k rows is spread over up to kMaxRowChunks·cols threads.
constexpr int64_t kMinChunkRows = 64;   // enough work per thread
constexpr int64_t kMaxRowChunks = 256;  // bounds the scratch at kMaxRowChunks·cols doubles

// ChunkSum: `__device__ double operator()(int64_t col, int64_t first_row, int64_t end_row) const`,
// the column's terms over rows [first_row, end_row) summed in ascending row order, in double.
// Grid: x over columns, y over chunks.
template <class ChunkSum>
__global__ void column_chunk_sums_kernel(ChunkSum chunk_sum, int64_t rows, int64_t cols, int64_t chunk_rows,
                                         double* partial) {
  const int64_t col = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (col >= cols) return;
  const int64_t first = blockIdx.y * chunk_rows;
  partial[blockIdx.y * cols + col] = chunk_sum(col, first, min(rows, first + chunk_rows));
}

// out[col] += Σ_chunk partial[chunk, col], chunks in ascending order (kernels/cuda/column_sums.cu).
constexpr int kChunkSumColumns = 32, kChunkSumThreads = 256;  // add_chunk_sums_kernel's block
__global__ void add_chunk_sums_kernel(const double* partial, int64_t chunks, int64_t cols, float* out);

// The row chunks of a column sum, also for kernels that make the partial sums themselves (fused with
// other work): their size depends on the row count only, so the order of the additions does too.
struct RowChunks {
  explicit RowChunks(int64_t rows)
      : rows_per_chunk(std::max(kMinChunkRows, (rows + kMaxRowChunks - 1) / kMaxRowChunks)),
        count((rows + rows_per_chunk - 1) / rows_per_chunk) {}
  int64_t rows_per_chunk, count;
};

// The second stage: out[col] += Σ_chunk partial[chunk, col] (partial: device_doubles(chunks·cols)).
inline void add_chunk_sums(const Tensor& partial, int64_t chunks, int64_t cols, float* out) {
  const auto blocks = static_cast<unsigned>((cols + kChunkSumColumns - 1) / kChunkSumColumns);
  add_chunk_sums_kernel<<<blocks, kChunkSumThreads, 0, compute_stream()>>>(doubles(partial), chunks, cols, out);
  EG_CUDA_CHECK_LAUNCH("add_chunk_sums_kernel");
}

// out[col] += Σ over rows [0, rows) of the column's terms (out: cols floats on the device).
template <class ChunkSum>
void add_column_sums(ChunkSum chunk_sum, int64_t rows, int64_t cols, float* out) {
  if (cols == 0) return;
  const RowChunks chunks(rows);
  const Tensor partial = device_doubles(chunks.count * cols);
  if (chunks.count > 0) {
    const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads), static_cast<unsigned>(chunks.count));
    column_chunk_sums_kernel<<<grid, kThreads, 0, compute_stream()>>>(chunk_sum, rows, cols, chunks.rows_per_chunk,
                                                                      doubles(partial));
    EG_CUDA_CHECK_LAUNCH("column_chunk_sums_kernel");
  }
  add_chunk_sums(partial, chunks.count, cols, out);
}

// The ChunkSum of Term (`__device__ double operator()(int64_t row, int64_t col) const`): its terms
// added in row order.
template <class Term>
struct SumOfRowTerms {
  Term term;
  __device__ double operator()(int64_t col, int64_t first_row, int64_t end_row) const {
    double sum = 0.0;
    for (int64_t row = first_row; row < end_row; ++row) sum += term(row, col);
    return sum;
  }
};

}  // namespace engram::kernels::cuda
