#pragma once
// The bf16 tensor-core path of the CUDA attention (included by kernels/cuda/attention.cu only), taken
// under MatmulPrecision::BF16 for head dims 64 and 128; other head dims run the float32 kernels even
// then. Same structure as the float32 kernels (FlashAttention-2: online-softmax forward; dK, dV per
// key tile and dQ per query tile in separate kernels, P recomputed; no atomics, so results repeat
// bitwise), with the tile products on tensor cores. The dQ kernel runs first and also computes the row
// deltas D_i, which the dK/dV kernel then reads (no separate delta kernel, no second read of dO for it):
//
// - The kernels read q, k, v, dO in bf16 (the model writes them so: kernels::attention_operand_dtype;
//   attention.cu rounds f32 ones to a bf16 copy first, nearest even). P and dS are rounded to bf16 as
//   they enter the products P·V, Pᵀ·dO, dS·K and dSᵀ·Q. Every product accumulates in float32; masking,
//   softmax, lse and D_i = Σ_d dO_id·O_id are float32 (D in double, summed as the float32 path sums it:
//   delta_of_row, from O as the forward wrote it), outputs float32, except that o and dV may be written
//   in bf16 (rounded to nearest even: what their products take, and what the deltas then read).
// - Each warp owns 16 rows of the block's 128 (queries in the forward and dQ kernels, keys in the
//   dK/dV kernel) and computes all their products with mma.sync m16n8k16 (bf16 in, f32 accumulate,
//   sm_80+), so scores, P and dS never leave its registers: an accumulator fragment of S (16 × 16
//   columns) is the A fragment of the next product after rounding (the FlashAttention-2 register
//   layout). 8 warps share each streamed tile, so a tile read from global memory feeds 128 rows.
// - The backward kernels are bound by shared-memory bandwidth (ldmatrix: 512 bytes per 2 mma, at 128
//   bytes a clock), so at head dim 64 each warp keeps the A fragments of its own 16 rows (K and V in the
//   dK/dV kernel, Q and dO in the dQ kernel) in registers for the whole loop (WarpRows) and reads only the
//   streamed tiles from shared memory: 64 instead of 72 ldmatrix per query tile (dK/dV), 48 instead of 56
//   per key tile (dQ). At 128 they would not fit beside the accumulators and are loaded per product.
// - Fragments come from shared memory with ldmatrix; rows are padded by 8 bf16 (16 bytes), so the 8
//   rows of an 8×8 matrix fall in distinct banks.
// - Tiles go from global to shared memory by cp.async (16 bytes a copy, no registers on the way), in
//   two stages: after the step's one barrier the block starts copying the next step's tiles into the
//   other stage, then computes on this one (forward and dQ: a key and a value tile; dK/dV: a query
//   and an output-gradient tile, with the queries' lse and delta read through registers).
// - A warp skips the tiles that lie wholly on the far side of the diagonal from its rows (and every
//   tile when its rows all lie past T): they would add exact zeros. So each warp computes what it did
//   in blocks of 64 rows, in the same order, and results are those of 64-row blocks bit for bit.
// - Exponentials in base 2, one fma and one MUFU op each: exp(scale·s − c) = 2^(s·(scale·log2 e) −
//   c·log2 e), c the running row max or lse. lse stays a natural log in memory (the CPU and the float32
//   kernels read it), converted on the way.
// - The causal mask (and the one of keys or queries past T) only on the tiles a warp has across the
//   diagonal or T; tiles below it skip the per-element selects.
// - The grid is (heads, tiles, batch) (launch_mma): blocks start in order of their linear index, so every
//   head of a batch element starts its longest tile before any starts a shorter one, and the grid ends
//   on short blocks (in a model of block costs on B 8 × H 12 × 16 tiles, the tiles of one head together
//   ended 9% past the even share of work, on the longest blocks of the last heads; this order, 2%).
// - Blocks of 8 warps; shared memory per block for d_h 64 / 128: forward 54 / 102 KB (the queries, two
//   stages of key and value tiles), dK/dV 73 / 103 KB, dQ 72 / 136 KB.
// - mma.sync with bf16, ldmatrix and cp.async need sm_80 or newer. At d_h 128 the dQ kernel's 136 KB
//   exceed what sm_86/89 GPUs give a block (99 KB): there tensor_core_attention_fits(128) is false and
//   the float32 kernels run.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/mma_fragments.cuh"
#include "kernels/gemm.h"

namespace engram::kernels::cuda {

namespace {

// ---- Layout ---------------------------------------------------------------------------------------

constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * kWarpSize;
constexpr int kWarpRows = 16;                          // the M of an mma tile
constexpr int kMmaOwned = kMmaWarps * kWarpRows;       // rows a block keeps: 16 per warp, 128
constexpr int kMmaKeys = 64;                           // keys per streamed tile (forward, dQ)
template <int kDim>
constexpr int kMmaQueries = kDim <= 64 ? 64 : 32;      // queries per streamed tile (dK/dV): fewer for
                                                       // wide heads, whose dK and dV fill the registers
constexpr float kLog2e = 1.4426950408889634f;

// Where a block of launch_mma's grid (h, x, b) works: the first of the 16 rows its warp w owns, and,
// for the query-tile kernels, the first row of its tile, gridDim.y − 1 − x (the longest tiles, those
// nearest the causal limit's end, start first).
__device__ inline int warp_first_row() { return static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows; }
__device__ inline int longest_first_query_row() {
  return static_cast<int>(gridDim.y - 1 - blockIdx.y) * kMmaOwned;
}

// ---- Tiles: bf16 in global memory, by cp.async to shared memory ---------------------------------

// Starts copying rows row0 … row0+kRows−1 of head (b, h) of x [B, T, H, kDim] (bf16, 16-byte aligned)
// into a tile, zeros past T (padding rows then add exact zeros to every product). The caller commits
// the group and waits for it.
template <int kRows, int kDim>
__device__ void copy_rows_async(Bf16Tile<kRows, kDim> tile, const __nv_bfloat16* x, const Geometry& g, int b, int h,
                                int row0) {
  constexpr int kChunksPerRow = kDim / 8, kChunks = kRows * kChunksPerRow;  // 16 bytes each
  static_assert(kChunks % kMmaThreads == 0);
  const __nv_bfloat16* head = x + g.at(b, 0, h);
  const int64_t row_stride = int64_t{g.heads} * kDim;
#pragma unroll
  for (int n = 0; n < kChunks / kMmaThreads; ++n) {
    const int i = static_cast<int>(threadIdx.x) + n * kMmaThreads;
    const int r = i / kChunksPerRow, c = i % kChunksPerRow * 8, t = row0 + r;
    const bool inside = t < g.seq;
    cp_async_16_or_zeros(tile.address(r, c), inside ? head + t * row_stride + c : head, inside);
  }
}

// Two buffers of a kernel's streamed tiles in shared memory, from `base`: step i computes on stage
// i % 2 while the copies of step i + 1 fill the other.
template <class Stage>
struct TwoStages {
  static constexpr size_t kBytes = 2 * Stage::kBytes;
  __nv_bfloat16* base;
  __device__ Stage operator[](int step) const {
    return Stage(base + step % 2 * (Stage::kBytes / sizeof(__nv_bfloat16)));
  }
};

// A key tile and its value tile: the stage of the forward and dQ kernels.
template <int kDim>
struct KeyValueStage {
  using Tile = Bf16Tile<kMmaKeys, kDim>;
  static constexpr size_t kBytes = 2 * Tile::kBytes;
  Tile k, v;
  __device__ explicit KeyValueStage(__nv_bfloat16* base) : k{base}, v{k.end()} {}
  // Starts copying keys and values k0 … of head (b, h).
  __device__ void copy_async(const __nv_bfloat16* keys, const __nv_bfloat16* values, const Geometry& g, int b,
                             int h, int k0) const {
    copy_rows_async(k, keys, g, b, h, k0);
    copy_rows_async(v, values, g, b, h, k0);
  }
};

// The key-tile loop of the forward and dQ kernels, for the block of queries q0 … (the warp's from t0),
// once the copies of key tile 0 into stage 0 are committed. Per tile: one barrier (its stage has
// landed everywhere, and no thread still reads the other stage), the copies of the next key and
// value tiles into the other stage, then step(k0, stage) where the warp has something to add: not on
// tiles wholly past its last row, nor when every row of it lies past T. Key 0 is visible to every
// row, so a warp's first step is on tile 0.
template <int kDim, class Step>
__device__ __forceinline__ void for_each_key_tile(const TwoStages<KeyValueStage<kDim>>& stages,
                                                  const __nv_bfloat16* k, const __nv_bfloat16* v, const Geometry& g,
                                                  int b, int h, int q0, int t0, Step&& step) {
  const int last_key = min(g.seq - 1, q0 + kMmaOwned - 1);
  for (int k0 = 0, i = 0; k0 <= last_key; k0 += kMmaKeys, ++i) {
    cp_async_wait<0>();  // this thread's copies of tile i have landed
    __syncthreads();     // every thread's have, and step i − 1 is done with the other stage
    if (k0 + kMmaKeys <= last_key) {
      stages[i + 1].copy_async(k, v, g, b, h, k0 + kMmaKeys);
      cp_async_commit();
    }
    if (t0 < g.seq && k0 <= t0 + kWarpRows - 1) step(k0, stages[i]);
  }
}

// ---- Warp products --------------------------------------------------------------------------------

// The warp's rows r0 … r0+15 of a tile the block keeps, as the A fragments of multiply_by_transpose.
// kInRegisters: all kDim/16 fragments loaded once, when constructed (after the tile has landed), for
// kDim/4 registers; every product then reads only its streamed tile from shared memory, whose bandwidth
// bounds the backward kernels. Else each product loads them again.
template <int kRows, int kDim, bool kInRegisters>
struct WarpRows {
  Bf16Tile<kRows, kDim> tile;
  int r0;
  uint32_t held[kInRegisters ? kDim / 16 : 1][4];
  __device__ WarpRows(Bf16Tile<kRows, kDim> rows_tile, int first_row) : tile{rows_tile}, r0{first_row} {
    if constexpr (kInRegisters) {
#pragma unroll
      for (int k0 = 0; k0 < kDim; k0 += 16) load_a(held[k0 / 16], tile, r0, k0);
    }
  }
  // The A fragment of columns k0 … k0+15.
  __device__ void fragment(uint32_t (&a)[4], int k0) const {
    if constexpr (kInRegisters) {
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = held[k0 / 16][i];
    } else {
      load_a(a, tile, r0, k0);
    }
  }
};

// The backward kernels hold their warps' rows in registers for head dim 64; at 128 the 64 more registers
// would not fit beside the accumulators without spilling.
template <int kDim>
constexpr bool kBackwardRowsInRegisters = kDim <= 64;

// c = a·bᵀ: the warp's 16 rows of a against every row of b (kCols of them), as kCols/8 accumulator tiles.
template <int kCols, int kARows, int kBRows, int kDim, bool kInRegisters>
__device__ void multiply_by_transpose(float (&c)[kCols / 8][4], const WarpRows<kARows, kDim, kInRegisters>& a,
                                      Bf16Tile<kBRows, kDim> b) {
  static_assert(kCols == kBRows && kCols % 16 == 0);
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[n][i] = 0.0f;
#pragma unroll
  for (int k0 = 0; k0 < kDim; k0 += 16) {
    uint32_t af[4];
    a.fragment(af, k0);
#pragma unroll
    for (int n0 = 0; n0 < kCols; n0 += 16) {
      uint32_t bf[4];
      load_b_of_transpose(bf, b, n0, k0);
      mma_two_tiles(c, n0, af, bf);
    }
  }
}

// acc += w·x: w [16, kInner] in the warp's accumulator tiles (P or dS, rounded to bf16 here), x the
// tile's rows 0 … kInner−1.
template <int kInner, int kRows, int kDim>
__device__ void accumulate_mma_product(float (&acc)[kDim / 8][4], const float (&w)[kInner / 8][4],
                                       Bf16Tile<kRows, kDim> x) {
  static_assert(kInner == kRows && kInner % 16 == 0);
#pragma unroll
  for (int k0 = 0; k0 < kInner; k0 += 16) {
    // Accumulator tiles k0/8 and k0/8 + 1 hold columns k0 … k0+15 in the A fragment's order.
    const float(&lo)[4] = w[k0 / 8];
    const float(&hi)[4] = w[k0 / 8 + 1];
    const uint32_t af[4] = {bf16_pair(lo[0], lo[1]), bf16_pair(lo[2], lo[3]), bf16_pair(hi[0], hi[1]),
                            bf16_pair(hi[2], hi[3])};
#pragma unroll
    for (int n0 = 0; n0 < kDim; n0 += 16) {
      uint32_t bf[4];
      load_b(bf, x, k0, n0);
      mma_two_tiles(acc, n0, af, bf);
    }
  }
}

// op over the 4 lanes that hold one accumulator row, returned to all 4 (bit for bit: a butterfly of
// commutative ops).
template <class Op>
__device__ float quad_reduce(float v, Op op) {
  v = op(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return op(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// 2^x in one MUFU.EX2 (relative error ~2^-22, far below bf16's 2^-9; 2^−∞ = 0; results below 2^-126,
// which nothing here can tell from 0, flush to 0). exp2f would add the subnormal handling, expf a
// range reduction.
__device__ inline float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Writes scale·acc, the warp's rows row0 + (g, g+8) of head (b, h) of x [B, T, H, kDim], within T: f32,
// or bf16 rounded to nearest even. A thread's two adjacent columns are one 8- or 4-byte store.
template <int kDim, class Out>
__device__ void store_warp_rows(const float (&acc)[kDim / 8][4], float scale, Out* x, const Geometry& g, int b, int h,
                                int row0) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = row0 + fragment_row() + 8 * half;
    if (t >= g.seq) continue;
    Out* row = x + g.at(b, t, h) + fragment_col();
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n) store_pair(row + 8 * n, acc[n][2 * half] * scale, acc[n][2 * half + 1] * scale);
  }
}

// ---- Forward --------------------------------------------------------------------------------------

// The block's queries, then two stages of key and value tiles.
template <int kDim>
struct MmaForwardShared {
  using QueryTile = Bf16Tile<kMmaOwned, kDim>;
  using Stages = TwoStages<KeyValueStage<kDim>>;
  static constexpr size_t kBytes = QueryTile::kBytes + Stages::kBytes;
  QueryTile q;
  Stages stages;
  __device__ explicit MmaForwardShared(__nv_bfloat16* base) : q{base}, stages{q.end()} {}
};

// −∞ for the keys past each of the warp's rows t0 + (g, g+8) and past T, in its score tiles of keys
// k0 …: the causal mask, for the tiles the diagonal (or T) crosses.
template <int kKeys>
__device__ void mask_future_keys(float (&score)[kKeys / 8][4], const Geometry& g, int k0, int t0) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + fragment_row() + 8 * half;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = k0 + 8 * n + fragment_col() + e;
        float& x = score[n][2 * half + e];
        x = key <= t && key < g.seq ? x : -INFINITY;
      }
  }
}

// One key tile of the online softmax of the warp's rows g and g + 8 (accumulator halves 0 and 1):
// raises the running max (of the unscaled scores) to the tile's, rescales the running sum and output
// to it, and makes the scores unnormalized probabilities exp(scale·(s − max)), computed as
// 2^(s·scale·log2 e − max·scale·log2 e) in one fma and one MUFU op.
template <int kKeys, int kDim>
__device__ void online_softmax_step(float (&score)[kKeys / 8][4], float (&row_max)[2], float (&row_sum)[2],
                                    float (&acc)[kDim / 8][4], float scale_log2) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(score[n][2 * half], score[n][2 * half + 1]));
    // Finite: key 0, in the first tile, is visible to every row. The first rescale is 2^−∞ = 0, of a
    // zero sum and output.
    const float new_max = fmaxf(row_max[half], quad_reduce(tile_max, Max{}));
    const float max_log2 = new_max * scale_log2;
    const float rescale = fast_exp2(fmaf(row_max[half], scale_log2, -max_log2));
    float tile_sum = 0.0f;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& x = score[n][2 * half + e];
        x = fast_exp2(fmaf(x, scale_log2, -max_log2));
        tile_sum += x;
      }
    row_sum[half] = row_sum[half] * rescale + quad_reduce(tile_sum, Sum{});
    row_max[half] = new_max;
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n) {
      acc[n][2 * half] *= rescale;
      acc[n][2 * half + 1] *= rescale;
    }
  }
}

// Block (h, x, b) (launch_mma): query tile gridDim.y − 1 − x (the longest rows first); warp w its rows
// 16w … 16w+15. Per key tile (for_each_key_tile): the warp's scores, softmax and P·V.
template <int kDim, class Out>
__global__ void __launch_bounds__(kMmaThreads)
    attention_forward_mma_kernel(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, Geometry g,
                                 Out* out, float* lse) {
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaForwardShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.x, r0 = warp_first_row();
  const int q0 = longest_first_query_row(), t0 = q0 + r0;  // t0: the warp's first row
  const float scale_log2 = g.scale * kLog2e;

  copy_rows_async(s.q, q, g, b, h, q0);
  s.stages[0].copy_async(k, v, g, b, h, 0);
  cp_async_commit();
  // Rows g and g + 8 of the warp's 16: running max, sum and output (accumulator halves 0 and 1).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, acc[kDim / 8][4] = {};

  for_each_key_tile(s.stages, k, v, g, b, h, q0, t0, [&](int k0, const KeyValueStage<kDim>& stage) {
    float score[kMmaKeys / 8][4];
    multiply_by_transpose<kMmaKeys>(score, WarpRows<kMmaOwned, kDim, false>(s.q, r0), stage.k);
    // Key j is visible to row t when j <= t and j < T: the mask is needed only where the tile's last
    // key lies past the warp's first row or past T.
    if (k0 + kMmaKeys - 1 > t0 || k0 + kMmaKeys > g.seq) mask_future_keys<kMmaKeys>(score, g, k0, t0);
    online_softmax_step<kMmaKeys, kDim>(score, row_max, row_sum, acc, scale_log2);
    accumulate_mma_product<kMmaKeys>(acc, score, stage.v);
  });

  const int64_t lse_row0 = g.row_stats(b, h);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + fragment_row() + 8 * half;
    if (t >= g.seq) continue;
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n) {
      acc[n][2 * half] /= row_sum[half];
      acc[n][2 * half + 1] /= row_sum[half];
    }
    // The natural log, as the CPU and the float32 kernels keep it.
    if (fragment_col() == 0) lse[lse_row0 + t] = row_max[half] * g.scale + logf(row_sum[half]);
  }
  store_warp_rows<kDim>(acc, 1.0f, out, g, b, h, t0);
}

// ---- Backward -------------------------------------------------------------------------------------

// (query, key, lse·log2 e, delta) of one accumulator element of the scores.
struct ScoreCoordinates {
  int query, key;
  float lse_log2, delta;
};

// P = exp(scale·s − lse), computed as 2^(s·scale·log2 e − lse·log2 e), and dS = P ⊙ (dp − delta) in
// place on the warp's accumulator tiles of s = q·kᵀ and dp = dO·vᵀ (or of their transposes);
// coordinates(n, i) says where element i of tile n lies. kMasked (tiles the diagonal or T crosses): P
// is 0 where the key is masked and for queries past T, so those add nothing to dK, dV or dQ.
template <bool kMasked, int kTiles, class Coordinates>
__device__ void recompute_p_and_ds(float (&s)[kTiles][4], float (&dp)[kTiles][4], const Geometry& g, float scale_log2,
                                   Coordinates&& coordinates) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const ScoreCoordinates at = coordinates(n, i);
      const float p = fast_exp2(fmaf(s[n][i], scale_log2, -at.lse_log2));
      s[n][i] = !kMasked || (at.key <= at.query && at.query < g.seq) ? p : 0.0f;
      dp[n][i] = s[n][i] * (dp[n][i] - at.delta);
    }
}

// recompute_p_and_ds, with the mask only where `masked` (warp-uniform).
template <int kTiles, class Coordinates>
__device__ void recompute_p_and_ds_fragments(bool masked, float (&s)[kTiles][4], float (&dp)[kTiles][4],
                                             const Geometry& g, float scale_log2, Coordinates&& coordinates) {
  if (masked)
    recompute_p_and_ds<true>(s, dp, g, scale_log2, coordinates);
  else
    recompute_p_and_ds<false>(s, dp, g, scale_log2, coordinates);
}

// One query tile of the dK/dV kernel, its output gradient, and its rows' lse·log2 e and delta: the
// stage of that kernel.
template <int kDim>
struct QueryStage {
  static constexpr int kQueries = kMmaQueries<kDim>;
  using Tile = Bf16Tile<kQueries, kDim>;
  static constexpr size_t kBytes = 2 * Tile::kBytes + 2 * kQueries * sizeof(float);
  static_assert(kBytes % 16 == 0, "stages follow each other, 16-byte aligned for cp.async and ldmatrix");
  Tile q, dout;
  float *lse_log2, *delta;
  __device__ explicit QueryStage(__nv_bfloat16* base)
      : q{base}, dout{q.end()}, lse_log2{reinterpret_cast<float*>(dout.end())}, delta{lse_log2 + kQueries} {}
  // Starts copying queries and output gradients q0 … of head (b, h).
  __device__ void copy_async(const __nv_bfloat16* queries, const __nv_bfloat16* dout_rows, const Geometry& g, int b,
                             int h, int q0) const {
    copy_rows_async(q, queries, g, b, h, q0);
    copy_rows_async(dout, dout_rows, g, b, h, q0);
  }
};

// lse and delta of query q0 + i, held by thread i < kQueries from the global read to the write into a
// query stage (0 past T).
template <int kDim>
struct QueryStatsInRegisters {
  static constexpr int kQueries = kMmaQueries<kDim>;
  float lse, delta;
  __device__ void read(const float* lse_rows, const float* delta_rows, const Geometry& g, int b, int h, int q0) {
    const int t = q0 + static_cast<int>(threadIdx.x);
    const bool in_sequence = threadIdx.x < kQueries && t < g.seq;
    lse = in_sequence ? lse_rows[g.row_stats(b, h) + t] : 0.0f;
    delta = in_sequence ? delta_rows[g.row_stats(b, h) + t] : 0.0f;
  }
  __device__ void write(const QueryStage<kDim>& stage) const {
    if (threadIdx.x >= kQueries) return;
    stage.lse_log2[threadIdx.x] = lse * kLog2e;
    stage.delta[threadIdx.x] = delta;
  }
};

// The block's keys and values, then two stages of query tiles.
template <int kDim>
struct MmaKeyValueGradShared {
  using KeyTile = Bf16Tile<kMmaOwned, kDim>;
  using Stages = TwoStages<QueryStage<kDim>>;
  static constexpr size_t kBytes = 2 * KeyTile::kBytes + Stages::kBytes;
  KeyTile k, v;
  Stages stages;
  __device__ explicit MmaKeyValueGradShared(__nv_bfloat16* base) : k{base}, v{k.end()}, stages{v.end()} {}
};

// Block (h, x, b) (launch_mma): keys 128x …, warp w its keys 128x + 16w …; dV = Σ Pᵀ·dO and
// dK = scale·Σ dSᵀ·Q over the query tiles from the block's first key on. The warp computes Pᵀ and dSᵀ
// directly (as k·qᵀ and v·dOᵀ) so that they are A fragments of those products. Per query tile: one
// barrier, the copies of the next query and output-gradient tiles (and the read of their stats)
// started, the four products; the stats are written into the other stage at the end (it was read
// before the barrier).
template <int kDim, class Dv>
__global__ void __launch_bounds__(kMmaThreads)
    attention_dkdv_mma_kernel(const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k,
                              const __nv_bfloat16* v, const float* lse, const float* delta, Geometry g, float* dk,
                              Dv* dv) {
  constexpr int kQueries = kMmaQueries<kDim>;
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaKeyValueGradShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.x, r0 = warp_first_row();
  const int k0 = static_cast<int>(blockIdx.y) * kMmaOwned, key0 = k0 + r0;  // key0: the warp's first key
  const float scale_log2 = g.scale * kLog2e;

  // k0 is a multiple of kQueries: earlier queries see none of the block's keys.
  copy_rows_async(s.k, k, g, b, h, k0);
  copy_rows_async(s.v, v, g, b, h, k0);
  s.stages[0].copy_async(q, dout, g, b, h, k0);
  cp_async_commit();
  {
    QueryStatsInRegisters<kDim> stats;
    stats.read(lse, delta, g, b, h, k0);
    stats.write(s.stages[0]);
  }
  cp_async_wait<0>();
  __syncthreads();  // the block's keys and values have landed
  using KeyRows = WarpRows<kMmaOwned, kDim, kBackwardRowsInRegisters<kDim>>;
  const KeyRows key_rows(s.k, r0), value_rows(s.v, r0);
  float dk_acc[kDim / 8][4] = {}, dv_acc[kDim / 8][4] = {};
  QueryStatsInRegisters<kDim> next_stats;

  for (int q0 = k0, i = 0; q0 < g.seq; q0 += kQueries, ++i) {
    const bool more = q0 + kQueries < g.seq;
    cp_async_wait<0>();  // this thread's copies of step i's tiles have landed
    __syncthreads();     // every thread's have (and its stats), and step i − 1 is done with the other stage
    if (more) {
      s.stages[i + 1].copy_async(q, dout, g, b, h, q0 + kQueries);
      cp_async_commit();
      next_stats.read(lse, delta, g, b, h, q0 + kQueries);
    }
    // Queries all before the warp's first key, or keys all past T: nothing to add.
    if (key0 < g.seq && key0 <= q0 + kQueries - 1) {
      const QueryStage<kDim> stage = s.stages[i];
      float p[kQueries / 8][4], ds[kQueries / 8][4];  // Pᵀ and dSᵀ: the warp's keys × the tile's queries
      multiply_by_transpose<kQueries>(p, key_rows, stage.q);
      multiply_by_transpose<kQueries>(ds, value_rows, stage.dout);
      // Key j is visible to query t when j <= t < T: masks only where the warp's last key lies past the
      // tile's first query, or the tile reaches past T.
      const bool masked = key0 + kWarpRows - 1 > q0 || q0 + kQueries > g.seq;
      const auto* lse_pairs = reinterpret_cast<const float2*>(stage.lse_log2);
      const auto* delta_pairs = reinterpret_cast<const float2*>(stage.delta);
      recompute_p_and_ds_fragments(masked, p, ds, g, scale_log2, [&](int n, int e) {
        // Columns 8n + fragment_col() and the one after: one float2 of each stat.
        const int column = 8 * n + fragment_col();
        const float2 lse_pair = lse_pairs[column / 2], delta_pair = delta_pairs[column / 2];
        return ScoreCoordinates{q0 + column + e % 2, key0 + fragment_row() + 8 * (e / 2),
                                e % 2 ? lse_pair.y : lse_pair.x, e % 2 ? delta_pair.y : delta_pair.x};
      });
      accumulate_mma_product<kQueries>(dv_acc, p, stage.dout);
      accumulate_mma_product<kQueries>(dk_acc, ds, stage.q);
    }
    if (more) next_stats.write(s.stages[i + 1]);
  }
  store_warp_rows<kDim>(dk_acc, g.scale, dk, g, b, h, key0);
  store_warp_rows<kDim>(dv_acc, 1.0f, dv, g, b, h, key0);
}

// The block's queries with their output gradient, then two stages of key and value tiles.
template <int kDim>
struct MmaQueryGradShared {
  using QueryTile = Bf16Tile<kMmaOwned, kDim>;
  using Stages = TwoStages<KeyValueStage<kDim>>;
  static constexpr size_t kBytes = 2 * QueryTile::kBytes + Stages::kBytes;
  QueryTile q, dout;
  Stages stages;
  __device__ explicit MmaQueryGradShared(__nv_bfloat16* base) : q{base}, dout{q.end()}, stages{dout.end()} {}
};

// Block (h, x, b) (launch_mma): query tile gridDim.y − 1 − x, warp w its rows 16w …; first the rows'
// deltas D_i = Σ_d dO_id·O_id, written for the dK/dV kernel (launched after this one), then
// dQ = scale·Σ_j dS·K over the key tiles up to the causal limit. Per key tile (for_each_key_tile): dO·vᵀ,
// q·kᵀ and dS·K.
template <int kDim, class Out>
__global__ void __launch_bounds__(kMmaThreads)
    attention_dq_mma_kernel(const __nv_bfloat16* dout, const __nv_bfloat16* q, const __nv_bfloat16* k,
                            const __nv_bfloat16* v, const Out* out, const float* lse, Geometry g, float* dq,
                            float* delta) {
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaQueryGradShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.x, r0 = warp_first_row();
  const int q0 = longest_first_query_row(), t0 = q0 + r0;  // t0: the warp's first row
  const float scale_log2 = g.scale * kLog2e;

  copy_rows_async(s.q, q, g, b, h, q0);
  copy_rows_async(s.dout, dout, g, b, h, q0);
  s.stages[0].copy_async(k, v, g, b, h, 0);
  cp_async_commit();
  // The delta of row t0 + lane in lanes 0 … 15, row by row over the whole warp (delta_of_row, as the float32
  // path sums), while the copies land; rows past T repeat row T − 1 and are not written. The loop is
  // unrolled and stores nothing, so every row's loads can be in flight together.
  const int64_t stats0 = g.row_stats(b, h);
  float lane_delta = 0.0f;
  if (t0 < g.seq) {
#pragma unroll
    for (int r = 0; r < kWarpRows; ++r) {
      const int64_t row = g.at(b, min(t0 + r, g.seq - 1), h);
      const float value = static_cast<float>(delta_of_row(dout + row, out + row, kDim));
      if (lane_id() == r) lane_delta = value;
    }
    if (lane_id() < kWarpRows && t0 + lane_id() < g.seq) delta[stats0 + t0 + lane_id()] = lane_delta;
  }
  // lse·log2 e and delta of rows g and g + 8 of the warp's 16 (0 past T).
  float row_lse_log2[2], row_delta[2], dq_acc[kDim / 8][4] = {};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = t0 + fragment_row() + 8 * half;
    const float delta_of_t = __shfl_sync(0xffffffffu, lane_delta, fragment_row() + 8 * half);
    row_lse_log2[half] = t < g.seq ? lse[stats0 + t] * kLog2e : 0.0f;
    row_delta[half] = t < g.seq ? delta_of_t : 0.0f;
  }
  cp_async_wait<0>();
  __syncthreads();  // the block's queries and output gradients have landed
  using QueryRows = WarpRows<kMmaOwned, kDim, kBackwardRowsInRegisters<kDim>>;
  const QueryRows query_rows(s.q, r0), dout_rows(s.dout, r0);

  for_each_key_tile(s.stages, k, v, g, b, h, q0, t0, [&](int k0, const KeyValueStage<kDim>& stage) {
    float p[kMmaKeys / 8][4], ds[kMmaKeys / 8][4];
    multiply_by_transpose<kMmaKeys>(ds, dout_rows, stage.v);  // dP, made dS below
    multiply_by_transpose<kMmaKeys>(p, query_rows, stage.k);
    // Key j is visible to query t when j <= t < T: masks only where the tile's last key lies past the
    // warp's first query, or the warp's rows reach past T.
    const bool masked = k0 + kMmaKeys - 1 > t0 || t0 + kWarpRows > g.seq;
    recompute_p_and_ds_fragments(masked, p, ds, g, scale_log2, [&](int n, int e) {
      const int half = e / 2;
      return ScoreCoordinates{t0 + fragment_row() + 8 * half, k0 + 8 * n + fragment_col() + e % 2,
                              row_lse_log2[half], row_delta[half]};
    });
    accumulate_mma_product<kMmaKeys>(dq_acc, ds, stage.k);
  });
  store_warp_rows<kDim>(dq_acc, g.scale, dq, g, b, h, t0);
}

// ---- Launches -------------------------------------------------------------------------------------

// Launches a tensor-core kernel on the grid (heads, tiles of kMmaOwned rows, batch). The hardware starts
// blocks in order of their linear index (x fastest), and each kernel reads tile rank 0 as its longest tile,
// so every head of a batch element starts its longest tile before any starts a shorter one: the grid ends
// on short blocks rather than on the long ones of its last head.
template <class Kernel, class... Args>
void launch_mma(Kernel* kernel, size_t shared_bytes, const AttentionDims& d, Args... args) {
  const int64_t tiles = (d.seq + kMmaOwned - 1) / kMmaOwned;
  EG_CHECK(tiles <= 65535, "attention: T ", d.seq, " exceeds the tensor-core kernels' limit (", 65535 * kMmaOwned, ")");
  const dim3 grid(static_cast<unsigned>(d.heads), static_cast<unsigned>(tiles), static_cast<unsigned>(d.batch));
  launch_with_shared(kernel, grid, kMmaThreads, shared_bytes, args...);
}

// Calls launch(std::integral_constant<int, head_dim>) for a head dim with a tensor-core instance.
template <class Launch>
void with_mma_instance(int64_t head_dim, Launch&& launch) {
  if (head_dim == 64) return launch(std::integral_constant<int, 64>{});
  EG_ASSERT(head_dim == 128, "no tensor-core attention instance for head_dim ", head_dim);
  launch(std::integral_constant<int, 128>{});
}

// x as the tensor-core kernels read it: bf16, 16-byte aligned for cp.async. An f32 x is rounded to a
// bf16 copy (nearest even: matmul_operand under BF16); a bf16 view that starts off a 16-byte boundary
// (a view may start at any element) is copied.
Tensor bf16_rows(const Tensor& x) {
  if (x.dtype() == DType::F32) return matmul_operand(x);
  return aligned_16(x) ? x : x.clone();
}
const __nv_bfloat16* bf16_data(const Tensor& x) { return static_cast<const __nv_bfloat16*>(x.raw()); }

// The kernels store a thread's two adjacent output columns as one access.
void check_pairs_aligned(const Tensor& x, const char* what) {
  EG_ASSERT(reinterpret_cast<uintptr_t>(x.raw()) % (2 * dtype_size(x.dtype())) == 0, "attention: ", what, " ",
            x.describe(), " must start at a multiple of two elements");
}

void attention_forward_mma(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, Tensor& out, Tensor& lse,
                           const AttentionDims& dims, const Geometry& g) {
  const Tensor q = bf16_rows(q_in), k = bf16_rows(k_in), v = bf16_rows(v_in);
  check_pairs_aligned(out, "out");
  with_mma_instance(dims.head_dim, [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    with_f32_or_bf16(out, "attention out", [&](auto* o) {
      using Out = std::remove_pointer_t<decltype(o)>;
      launch_mma(attention_forward_mma_kernel<kDim, Out>, MmaForwardShared<kDim>::kBytes, dims, bf16_data(q),
                 bf16_data(k), bf16_data(v), g, o, lse.data<float>());
    });
    EG_CUDA_CHECK_LAUNCH("attention_forward_mma_kernel");
  });
}

void attention_backward_mma(const Tensor& dout_in, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                            const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv,
                            const AttentionDims& dims, const Geometry& g) {
  const Tensor dout = bf16_rows(dout_in), q = bf16_rows(q_in), k = bf16_rows(k_in), v = bf16_rows(v_in);
  check_pairs_aligned(dq, "dq");
  check_pairs_aligned(dk, "dk");
  check_pairs_aligned(dv, "dv");
  with_mma_instance(dims.head_dim, [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    // Row deltas [B, H, T], of the bf16 dO the products read: written by the dQ kernel, read by the dK/dV
    // kernel queued after it. Freed on return, which only work queued later can reuse.
    Tensor delta = Tensor::empty({dims.batch, dims.heads, dims.seq}, DType::F32, Device::CUDA);
    with_f32_or_bf16(out, "attention out", [&](auto* o) {
      using Out = std::remove_pointer_t<decltype(o)>;
      launch_mma(attention_dq_mma_kernel<kDim, Out>, MmaQueryGradShared<kDim>::kBytes, dims, bf16_data(dout),
                 bf16_data(q), bf16_data(k), bf16_data(v), static_cast<const Out*>(o), lse.data<float>(), g,
                 dq.data<float>(), delta.data<float>());
    });
    EG_CUDA_CHECK_LAUNCH("attention_dq_mma_kernel");
    with_f32_or_bf16(dv, "attention dv", [&](auto* dv_out) {
      using Dv = std::remove_pointer_t<decltype(dv_out)>;
      launch_mma(attention_dkdv_mma_kernel<kDim, Dv>, MmaKeyValueGradShared<kDim>::kBytes, dims, bf16_data(dout),
                 bf16_data(q), bf16_data(k), bf16_data(v), lse.data<float>(), delta.data<float>(), g,
                 dk.data<float>(), dv_out);
    });
    EG_CUDA_CHECK_LAUNCH("attention_dkdv_mma_kernel");
  });
}

}  // namespace

}  // namespace engram::kernels::cuda
