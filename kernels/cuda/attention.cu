// Causal attention on the GPU, the CUDA side of kernels/attention.h, fused in the flash-attention way:
// scores live in registers and shared memory only, never as a [T, T] matrix in global memory.
//
// Forward: one block per (query tile, head, batch) walks the key tiles up to the causal limit with an
// online softmax (running row max and sum, the accumulated output rescaled as the max grows), then
// writes out and lse. Backward (FlashAttention-2): delta_i = Σ_d dO_id·O_id per row; one block per
// key tile loops over the query tiles and accumulates dK, dV; a separate block per query tile loops
// over the key tiles and accumulates dQ (on the tensor-core path, that block also computes its rows'
// deltas, and runs before the dK/dV kernel). Both recompute P = exp(s − lse). Every output element has
// one owner thread that sums in a fixed order, so results repeat bitwise from run to run (no atomics).
//
// Two paths. Under MatmulPrecision::BF16, head dims 64 and 128 run the bf16 tensor-core kernels of
// attention_tensor_core.cuh (q, k, v, dO read in bf16, P and dS rounded to bf16 as products read
// them). Everything else, including other head dims under BF16, runs the float32 kernels here on CUDA
// cores (the parity mode): instantiated for head dims up to 64, 128 and 256 (a head of d_h runs in the
// smallest that holds it, zero-padded to its bound).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/checks.h"
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/attention_tensor_core.cuh"
#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

// ---- Layout ---------------------------------------------------------------------------------------

// Every block is a 16×16 grid of threads: thread (ty, tx) owns rows ty, ty+16, … and columns tx,
// tx+16, … of each tile it computes. A row's 16 owners are 16 consecutive lanes of one warp, so a
// row reduction is a half-warp shuffle.
constexpr int kSide = 16;
constexpr int kBlockThreads = kSide * kSide;

__device__ inline int thread_row() { return static_cast<int>(threadIdx.x) / kSide; }
__device__ inline int thread_col() { return static_cast<int>(threadIdx.x) % kSide; }

// Tile heights of the instance for head dims up to kDim. A block keeps one tile of kOwned rows
// (queries in the forward and dQ kernels, keys in the dK/dV kernel) and streams tiles of kStreamed
// rows past it. Wider heads take shorter tiles so shared memory stays near 100 KB or below.
template <int kDim>
struct Tiles {
  static_assert(kDim % 32 == 0, "a padded row stride of kDim + 1 must be ≡ 1 (mod 32 banks)");
  static constexpr int kOwned = kDim <= 128 ? 64 : 32;
  static constexpr int kStreamed = kOwned / 2;
};

// A [kRows, kCols] float tile in shared memory. Rows are padded to an odd stride, so the 16 rows tx,
// tx+16, … that a half-warp reads at one column fall in 16 different banks.
template <int kRows, int kCols>
struct SharedTile {
  static constexpr int kStride = kCols + 1;
  static constexpr int kFloats = kRows * kStride;
  float* data;
  __device__ float& operator()(int r, int c) const { return data[r * kStride + c]; }
  __device__ float* end() const { return data + kFloats; }
};

// Dynamic shared memory of a kernel made of these parts.
template <class... Part>
constexpr size_t shared_bytes = sizeof(float) * (Part::kFloats + ...);

// ---- Tile math (float32, CUDA cores) -------------------------------------------------------------

// Rows row0 … row0+kRows−1 of head (b, h) of x [B, T, H, d_h] into a tile; zeros past the sequence
// and past d_h, so the padding adds exact zeros to every product.
template <int kRows, int kDim>
__device__ void load_rows(SharedTile<kRows, kDim> tile, const float* x, const Geometry& g, int b, int h, int row0) {
  for (int e = threadIdx.x; e < kRows * kDim; e += kBlockThreads) {
    const int r = e / kDim, c = e % kDim, t = row0 + r;
    tile(r, c) = t < g.seq && c < g.head_dim ? x[g.at(b, t, h) + c] : 0.0f;
  }
}

// out[i][j] = Σ_c a(ty + 16i, c)·b(tx + 16j, c): the thread's entries of a·bᵀ, summed in order of c.
template <int kARows, int kBRows, int kDim>
__device__ void dot_rows(SharedTile<kARows, kDim> a, SharedTile<kBRows, kDim> b,
                         float (&out)[kARows / kSide][kBRows / kSide]) {
  constexpr int kM = kARows / kSide, kN = kBRows / kSide;
  const int ty = thread_row(), tx = thread_col();
#pragma unroll
  for (int i = 0; i < kM; ++i)
#pragma unroll
    for (int j = 0; j < kN; ++j) out[i][j] = 0.0f;
#pragma unroll 8
  for (int c = 0; c < kDim; ++c) {
    float av[kM], bv[kN];
#pragma unroll
    for (int i = 0; i < kM; ++i) av[i] = a(ty + kSide * i, c);
#pragma unroll
    for (int j = 0; j < kN; ++j) bv[j] = b(tx + kSide * j, c);
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j) out[i][j] = fmaf(av[i], bv[j], out[i][j]);
  }
}

// tile(ty + 16i, tx + 16j) = frag[i][j]: the thread's entries of a tile computed by dot_rows.
template <int kRows, int kCols>
__device__ void store_fragment(SharedTile<kRows, kCols> tile, const float (&frag)[kRows / kSide][kCols / kSide]) {
  const int ty = thread_row(), tx = thread_col();
#pragma unroll
  for (int i = 0; i < kRows / kSide; ++i)
#pragma unroll
    for (int j = 0; j < kCols / kSide; ++j) tile(ty + kSide * i, tx + kSide * j) = frag[i][j];
}

// acc[i][j] += Σ_k w(ty + 16i, k)·v(k, tx + 16j): the thread's entries of w·v, added in order of k.
// kTransposeW: the tile holds wᵀ (w(r, k) = tile(k, r)), for Pᵀ·dO and dSᵀ·Q.
template <bool kTransposeW, int kWRows, int kWCols, int kInner, int kDim, int kM>
__device__ void accumulate_product(SharedTile<kWRows, kWCols> w, SharedTile<kInner, kDim> v,
                                   float (&acc)[kM][kDim / kSide]) {
  static_assert((kTransposeW ? kWRows : kWCols) == kInner && (kTransposeW ? kWCols : kWRows) == kM * kSide);
  constexpr int kN = kDim / kSide;
  const int ty = thread_row(), tx = thread_col();
#pragma unroll 4
  for (int k = 0; k < kInner; ++k) {
    float wv[kM], vv[kN];
#pragma unroll
    for (int i = 0; i < kM; ++i) wv[i] = kTransposeW ? w(k, ty + kSide * i) : w(ty + kSide * i, k);
#pragma unroll
    for (int j = 0; j < kN; ++j) vv[j] = v(k, tx + kSide * j);
#pragma unroll
    for (int i = 0; i < kM; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j) acc[i][j] = fmaf(wv[i], vv[j], acc[i][j]);
  }
}

// op over the 16 lanes that own one tile row. A butterfly: every lane ends with the same value, bit
// for bit (each step combines the same two operands, and + and max are commutative).
template <class Op>
__device__ float row_reduce(float v, Op op) {
  for (int offset = kSide / 2; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Writes the thread's entries scale·acc of rows row0 … of head (b, h) of x [B, T, H, d_h], within T and d_h.
template <int kM, int kN>
__device__ void store_rows(const float (&acc)[kM][kN], float scale, float* x, const Geometry& g, int b, int h,
                           int row0) {
  const int ty = thread_row(), tx = thread_col();
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    const int t = row0 + ty + kSide * i;
    if (t >= g.seq) continue;
    float* row = x + g.at(b, t, h);
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const int c = tx + kSide * j;
      if (c < g.head_dim) row[c] = acc[i][j] * scale;
    }
  }
}

// ---- Forward --------------------------------------------------------------------------------------

// The query tile, one key-or-value tile (the keys for the scores, then the values for the product)
// and the probabilities of the current key tile.
template <int kDim>
struct ForwardShared {
  using T = Tiles<kDim>;
  using QueryTile = SharedTile<T::kOwned, kDim>;
  using KeyValueTile = SharedTile<T::kStreamed, kDim>;
  using ProbTile = SharedTile<T::kOwned, T::kStreamed>;
  static constexpr size_t kBytes = shared_bytes<QueryTile, KeyValueTile, ProbTile>;
  QueryTile q;
  KeyValueTile kv;
  ProbTile p;
  __device__ explicit ForwardShared(float* base) : q{base}, kv{q.end()}, p{kv.end()} {}
};

// Block (x, h, b): query tile gridDim.x − 1 − x (the longest rows first, for a shorter tail).
template <int kDim>
__global__ void __launch_bounds__(kBlockThreads)
    attention_forward_kernel(const float* q, const float* k, const float* v, Geometry g, float* out, float* lse) {
  using T = Tiles<kDim>;
  constexpr int kRows = T::kOwned / kSide, kKeys = T::kStreamed / kSide, kCols = kDim / kSide;
  extern __shared__ float shared[];
  const ForwardShared<kDim> s(shared);
  const int b = blockIdx.z, h = blockIdx.y, ty = thread_row(), tx = thread_col();
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * T::kOwned;

  load_rows(s.q, q, g, b, h, q0);
  float row_max[kRows], row_sum[kRows], acc[kRows][kCols];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc[i][j] = 0.0f;
  }

  const int last_key = min(g.seq - 1, q0 + T::kOwned - 1);
  for (int k0 = 0; k0 <= last_key; k0 += T::kStreamed) {
    __syncthreads();  // the previous value tile and probabilities are read
    load_rows(s.kv, k, g, b, h, k0);
    __syncthreads();
    float score[kRows][kKeys];
    dot_rows(s.q, s.kv, score);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      // Key j is visible to row t when j <= t (and j < T: rows past T are padding, never written).
      const int t = q0 + ty + kSide * i;
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kKeys; ++j) {
        const int key = k0 + tx + kSide * j;
        score[i][j] = key <= t && key < g.seq ? score[i][j] * g.scale : -INFINITY;
        tile_max = fmaxf(tile_max, score[i][j]);
      }
      // Finite: key 0, in the first tile, is visible to every row.
      const float new_max = fmaxf(row_max[i], row_reduce(tile_max, Max{}));
      const float rescale = expf(row_max[i] - new_max);
      float tile_sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kKeys; ++j) {
        score[i][j] = expf(score[i][j] - new_max);  // now the unnormalized probability
        tile_sum += score[i][j];
      }
      row_sum[i] = row_sum[i] * rescale + row_reduce(tile_sum, Sum{});
      row_max[i] = new_max;
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[i][j] *= rescale;
    }
    store_fragment(s.p, score);
    __syncthreads();  // the key tile is read and the probabilities are written
    load_rows(s.kv, v, g, b, h, k0);
    __syncthreads();
    accumulate_product<false>(s.p, s.kv, acc);
  }

  const int64_t lse_row0 = g.row_stats(b, h);
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int t = q0 + ty + kSide * i;
    if (t >= g.seq) continue;
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc[i][j] /= row_sum[i];
    if (tx == 0) lse[lse_row0 + t] = row_max[i] + logf(row_sum[i]);
  }
  store_rows(acc, 1.0f, out, g, b, h, q0);
}

// ---- Backward -------------------------------------------------------------------------------------

// delta[b, h, t] = delta_of_row of row (b, t, h): one warp per row (the float32 kernels').
__global__ void attention_delta_kernel(const float* dout, const float* out, Geometry g, int64_t rows, float* delta) {
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; r < rows; r += warps) {
    const double dot = delta_of_row(dout + r * g.head_dim, out + r * g.head_dim, g.head_dim);
    if (lane_id() == 0) {
      const int64_t h = r % g.heads, bt = r / g.heads;  // r = (b·T + t)·H + h
      delta[(bt / g.seq * g.heads + h) * g.seq + bt % g.seq] = static_cast<float>(dot);
    }
  }
}

// The row deltas [B, H, T] of the float32 backward. Freed by the caller on return: the allocator reuses
// the block only for work queued after the kernels that read it.
Tensor row_deltas(const Tensor& dout, const Tensor& out, const AttentionDims& d, const Geometry& g) {
  Tensor delta = Tensor::empty({d.batch, d.heads, d.seq}, DType::F32, Device::CUDA);
  const int64_t rows = d.batch * d.seq * d.heads;
  attention_delta_kernel<<<grid_for(rows * 32), kThreads, 0, compute_stream()>>>(dout.data<float>(), out.data<float>(),
                                                                                 g, rows, delta.data<float>());
  EG_CUDA_CHECK_LAUNCH("attention_delta_kernel");
  return delta;
}

// stats[b, h, t] ([B, H, T]: lse or delta) of the thread's query rows t = q0 + ty + 16i; 0 past T.
template <int kM>
__device__ void load_row_stats(const float* stats, const Geometry& g, int b, int h, int q0, float (&out)[kM]) {
  const int64_t row0 = g.row_stats(b, h);
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    const int t = q0 + thread_row() + kSide * i;
    out[i] = t < g.seq ? stats[row0 + t] : 0.0f;
  }
}

// The thread's entries (query q0 + ty + 16i, key k0 + tx + 16j) of one query tile against one key
// tile: P = exp(scale·q·kᵀ − lse) recomputed, and dS = P ⊙ (dO·vᵀ − delta). P is 0 where the key is
// masked and on padding rows past T, so those add nothing to dK, dV or dQ.
template <int kQueries, int kKeys, int kDim>
__device__ void recompute_p_and_ds(SharedTile<kQueries, kDim> q, SharedTile<kQueries, kDim> dout,
                                   SharedTile<kKeys, kDim> k, SharedTile<kKeys, kDim> v,
                                   const float (&row_lse)[kQueries / kSide], const float (&row_delta)[kQueries / kSide],
                                   int q0, int k0, const Geometry& g, float (&p)[kQueries / kSide][kKeys / kSide],
                                   float (&ds)[kQueries / kSide][kKeys / kSide]) {
  const int ty = thread_row(), tx = thread_col();
  dot_rows(q, k, p);
  dot_rows(dout, v, ds);  // dP, made dS below
#pragma unroll
  for (int i = 0; i < kQueries / kSide; ++i) {
    const int t = q0 + ty + kSide * i;
#pragma unroll
    for (int j = 0; j < kKeys / kSide; ++j) {
      const int key = k0 + tx + kSide * j;
      p[i][j] = key <= t && t < g.seq ? expf(p[i][j] * g.scale - row_lse[i]) : 0.0f;
      ds[i][j] = p[i][j] * (ds[i][j] - row_delta[i]);
    }
  }
}

// The block's keys and values, the current query tile with its output gradient, and the tile's P and dS.
template <int kDim>
struct KeyValueGradShared {
  using T = Tiles<kDim>;
  using KeyTile = SharedTile<T::kOwned, kDim>;
  using QueryTile = SharedTile<T::kStreamed, kDim>;
  using ScoreTile = SharedTile<T::kStreamed, T::kOwned>;
  static constexpr size_t kBytes = shared_bytes<KeyTile, KeyTile, QueryTile, QueryTile, ScoreTile, ScoreTile>;
  KeyTile k, v;
  QueryTile q, dout;
  ScoreTile p, ds;
  __device__ explicit KeyValueGradShared(float* base)
      : k{base}, v{k.end()}, q{v.end()}, dout{q.end()}, p{dout.end()}, ds{p.end()} {}
};

// Block (x, h, b): keys x·kOwned …; dV = Σ_t Pᵀ·dO and dK = scale·Σ_t dSᵀ·Q over the query tiles
// from the block's first key on (earlier queries see none of its keys).
template <int kDim>
__global__ void __launch_bounds__(kBlockThreads)
    attention_dkdv_kernel(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                          const float* delta, Geometry g, float* dk, float* dv) {
  using T = Tiles<kDim>;
  constexpr int kKeys = T::kOwned / kSide, kRows = T::kStreamed / kSide, kCols = kDim / kSide;
  extern __shared__ float shared[];
  const KeyValueGradShared<kDim> s(shared);
  const int b = blockIdx.z, h = blockIdx.y;
  const int k0 = static_cast<int>(blockIdx.x) * T::kOwned;

  load_rows(s.k, k, g, b, h, k0);
  load_rows(s.v, v, g, b, h, k0);
  float dk_acc[kKeys][kCols] = {}, dv_acc[kKeys][kCols] = {};

  for (int q0 = k0 / T::kStreamed * T::kStreamed; q0 < g.seq; q0 += T::kStreamed) {
    __syncthreads();  // the previous query tile, P and dS are read
    load_rows(s.q, q, g, b, h, q0);
    load_rows(s.dout, dout, g, b, h, q0);
    float row_lse[kRows], row_delta[kRows];
    load_row_stats(lse, g, b, h, q0, row_lse);
    load_row_stats(delta, g, b, h, q0, row_delta);
    __syncthreads();
    float p[kRows][kKeys], ds[kRows][kKeys];
    recompute_p_and_ds(s.q, s.dout, s.k, s.v, row_lse, row_delta, q0, k0, g, p, ds);
    store_fragment(s.p, p);
    store_fragment(s.ds, ds);
    __syncthreads();
    accumulate_product<true>(s.p, s.dout, dv_acc);
    accumulate_product<true>(s.ds, s.q, dk_acc);
  }
  store_rows(dk_acc, g.scale, dk, g, b, h, k0);
  store_rows(dv_acc, 1.0f, dv, g, b, h, k0);
}

// The block's queries with their output gradient, one key tile and one value tile, and the tile's
// score gradients dS.
template <int kDim>
struct QueryGradShared {
  using T = Tiles<kDim>;
  using QueryTile = SharedTile<T::kOwned, kDim>;
  using KeyTile = SharedTile<T::kStreamed, kDim>;
  using ScoreTile = SharedTile<T::kOwned, T::kStreamed>;
  static constexpr size_t kBytes = shared_bytes<QueryTile, QueryTile, KeyTile, KeyTile, ScoreTile>;
  QueryTile q, dout;
  KeyTile k, v;
  ScoreTile ds;
  __device__ explicit QueryGradShared(float* base) : q{base}, dout{q.end()}, k{dout.end()}, v{k.end()}, ds{v.end()} {}
};

// Block (x, h, b): query tile gridDim.x − 1 − x; dQ = scale·Σ_j dS·K over the key tiles up to the
// causal limit.
template <int kDim>
__global__ void __launch_bounds__(kBlockThreads)
    attention_dq_kernel(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                        const float* delta, Geometry g, float* dq) {
  using T = Tiles<kDim>;
  constexpr int kRows = T::kOwned / kSide, kKeys = T::kStreamed / kSide, kCols = kDim / kSide;
  extern __shared__ float shared[];
  const QueryGradShared<kDim> s(shared);
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * T::kOwned;

  load_rows(s.q, q, g, b, h, q0);
  load_rows(s.dout, dout, g, b, h, q0);
  float row_lse[kRows], row_delta[kRows], dq_acc[kRows][kCols] = {};
  load_row_stats(lse, g, b, h, q0, row_lse);
  load_row_stats(delta, g, b, h, q0, row_delta);

  const int last_key = min(g.seq - 1, q0 + T::kOwned - 1);
  for (int k0 = 0; k0 <= last_key; k0 += T::kStreamed) {
    __syncthreads();  // the previous key tile and dS are read
    load_rows(s.k, k, g, b, h, k0);
    load_rows(s.v, v, g, b, h, k0);
    __syncthreads();
    float p[kRows][kKeys], ds[kRows][kKeys];
    recompute_p_and_ds(s.q, s.dout, s.k, s.v, row_lse, row_delta, q0, k0, g, p, ds);
    store_fragment(s.ds, ds);
    __syncthreads();
    accumulate_product<false>(s.ds, s.k, dq_acc);
  }
  store_rows(dq_acc, g.scale, dq, g, b, h, q0);
}

// ---- Launches -------------------------------------------------------------------------------------

// Launches kernel on blocks of `threads` threads, one per tile of `rows_per_block` rows of each (head, batch):
// grid (tiles, heads, batch).
template <class Kernel, class... Args>
void launch_on_tiles(Kernel* kernel, int rows_per_block, int threads, size_t shared_bytes, const AttentionDims& d,
                     Args... args) {
  const dim3 grid(static_cast<unsigned>((d.seq + rows_per_block - 1) / rows_per_block), static_cast<unsigned>(d.heads),
                  static_cast<unsigned>(d.batch));
  launch_with_shared(kernel, grid, threads, shared_bytes, args...);
}

// Calls launch(std::integral_constant<int, kDim>) for the smallest instance kDim >= head_dim.
template <class Launch>
void with_head_dim_instance(int64_t head_dim, const char* kernel, Launch&& launch) {
  if (head_dim <= 64) return launch(std::integral_constant<int, 64>{});
  if (head_dim <= 128) return launch(std::integral_constant<int, 128>{});
  EG_CHECK(head_dim <= 256, kernel, ": head_dim ", head_dim, " exceeds the largest CUDA instance (256)");
  launch(std::integral_constant<int, 256>{});
}

// Whether the tensor-core path runs a problem of this head dim (see the head comment).
bool uses_tensor_cores(const AttentionDims& d) {
  return attention_operand_dtype(Device::CUDA, d.head_dim) == DType::BF16;
}

// The dtype q, k, v and dout may have: bf16 where the tensor-core path runs, else f32 (which that
// path also takes, rounding it itself).
DType accepted_operand_dtype(const Tensor& q) {
  const bool bf16_allowed = q.ndim() == 4 && attention_operand_dtype(Device::CUDA, q.dim(3)) == DType::BF16;
  return q.dtype() == DType::BF16 && bf16_allowed ? DType::BF16 : DType::F32;
}

}  // namespace

bool tensor_core_attention_fits(int64_t head_dim) {
  static const int optin_bytes = [] {
    int bytes = 0;
    EG_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, cuda_context().device));
    return bytes;
  }();
  size_t needed = 0;
  with_mma_instance(head_dim, [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    needed = std::max({MmaForwardShared<kDim>::kBytes, MmaKeyValueGradShared<kDim>::kBytes,
                       MmaQueryGradShared<kDim>::kBytes});
  });
  return needed <= static_cast<size_t>(optin_bytes);
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse) {
  check_on_cuda("attention_forward", q, k, v, out, lse);
  const AttentionDims dims = checks::attention_forward(q, k, v, out, lse, accepted_operand_dtype(q));
  const Geometry g = geometry_of(dims, "attention_forward");
  if (dims.batch == 0 || dims.seq == 0 || dims.heads == 0) return;
  if (uses_tensor_cores(dims)) return attention_forward_mma(q, k, v, out, lse, dims, g);
  with_head_dim_instance(dims.head_dim, "attention_forward", [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    launch_on_tiles(attention_forward_kernel<kDim>, Tiles<kDim>::kOwned, kBlockThreads, ForwardShared<kDim>::kBytes,
                    dims, q.data<float>(), k.data<float>(), v.data<float>(), g, out.data<float>(), lse.data<float>());
    EG_CUDA_CHECK_LAUNCH("attention_forward_kernel");
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
  check_on_cuda("attention_backward", dout, q, k, v, out, lse, dq, dk, dv);
  const AttentionDims dims = checks::attention_backward(dout, q, k, v, out, lse, dq, dk, dv, accepted_operand_dtype(q));
  const Geometry g = geometry_of(dims, "attention_backward");
  if (dims.batch == 0 || dims.seq == 0 || dims.heads == 0) return;
  if (uses_tensor_cores(dims)) return attention_backward_mma(dout, q, k, v, out, lse, dq, dk, dv, dims, g);
  with_head_dim_instance(dims.head_dim, "attention_backward", [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    const Tensor delta = row_deltas(dout, out, dims, g);
    launch_on_tiles(attention_dkdv_kernel<kDim>, Tiles<kDim>::kOwned, kBlockThreads, KeyValueGradShared<kDim>::kBytes,
                    dims, dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), lse.data<float>(),
                    delta.data<float>(), g, dk.data<float>(), dv.data<float>());
    EG_CUDA_CHECK_LAUNCH("attention_dkdv_kernel");
    launch_on_tiles(attention_dq_kernel<kDim>, Tiles<kDim>::kOwned, kBlockThreads, QueryGradShared<kDim>::kBytes, dims,
                    dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), lse.data<float>(),
                    delta.data<float>(), g, dq.data<float>());
    EG_CUDA_CHECK_LAUNCH("attention_dq_kernel");
  });
}

}  // namespace engram::kernels::cuda
