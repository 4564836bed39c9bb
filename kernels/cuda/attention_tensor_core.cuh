#pragma once
// The bf16 tensor-core path of the CUDA attention (included by kernels/cuda/attention.cu only), taken
// under MatmulPrecision::BF16 for head dims 64 and 128; other head dims run the float32 kernels even
// then. Same structure as the float32 kernels (FlashAttention-2: online-softmax forward; dK, dV per
// key tile and dQ per query tile in separate kernels, P recomputed; no atomics, so results repeat
// bitwise), with the tile products on tensor cores:
//
// - q, k, v, dO are rounded to bf16 (nearest even) as their tiles are loaded into shared memory;
//   P and dS are rounded to bf16 as they enter the products P·V, Pᵀ·dO, dS·K and dSᵀ·Q. Every product
//   accumulates in float32; masking, softmax, lse and D_i = Σ_d dO_id·O_id (of the rounded dO) are
//   float32 (D in double), outputs float32.
// - Each warp owns 16 rows of the block's 64 (queries in the forward and dQ kernels, keys in the dK/dV
//   kernel) and computes all their products with mma.sync m16n8k16 (bf16 in, f32 accumulate, sm_80+),
//   so scores, P and dS never leave its registers: an accumulator fragment of S (16 × 16 columns) is
//   the A fragment of the next product after rounding (the FlashAttention-2 register layout).
// - Fragments come from shared memory with ldmatrix; rows are padded by 8 bf16 (16 bytes), so the 8
//   rows of an 8×8 matrix fall in distinct banks.
// - Streamed tiles pass through registers, so that global latency hides behind the tensor cores:
//   a thread reads its float32 share of the tile needed next before a product and writes it to
//   shared memory (as bf16) after, one tile per half of the loop body, two barriers per step
//   (cp.async would need float32 staging in shared memory). Forward: V during q·kᵀ and the softmax,
//   the next K during P·V. dQ: K during dO·vᵀ, the next V during q·kᵀ and dS·K. dK/dV: dO during k·qᵀ,
//   the next q (with its lse and delta) during the other three; q, read on both sides of the step's
//   first barrier, has two buffers, the next one written while the current one is read.
// - Exponentials in base 2, one fma and one MUFU op each: exp(scale·s − c) = 2^(s·(scale·log2 e) −
//   c·log2 e), c the running row max or lse. lse stays a natural log in memory (the CPU and the float32
//   kernels read it), converted on the way.
// - The causal mask (and the one of keys or queries past T) only on the tiles a warp has across the
//   diagonal or T; tiles below it skip the per-element selects.
// - Blocks of 4 warps; shared memory per block for d_h 64 / 128: forward 27 / 51 KB (q, k, v tiles),
//   dK/dV 46 / 60 KB, dQ 36 / 68 KB.
// - mma.sync with bf16 and ldmatrix need sm_80 or newer (the project builds for 80 and 90).
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/mma_fragments.cuh"

namespace engram::kernels::cuda {

namespace {

// ---- Layout ---------------------------------------------------------------------------------------

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * kWarpSize;
constexpr int kWarpRows = 16;                          // the M of an mma tile
constexpr int kMmaOwned = kMmaWarps * kWarpRows;       // rows a block keeps: 16 per warp
constexpr int kMmaKeys = 64;                           // keys per streamed tile (forward, dQ)
template <int kDim>
constexpr int kMmaQueries = kDim <= 64 ? 64 : 32;      // queries per streamed tile (dK/dV): fewer for
                                                       // wide heads, whose dK and dV fill the registers
constexpr float kLog2e = 1.4426950408889634f;

// ---- Tiles: float32 in global memory, through registers, to bf16 in shared memory -----------------

// A thread's share of rows row0 … row0+kRows−1 of head (b, h) of a source [B, T, H, kDim], held as
// float32 from the global read to the shared-memory write (rounding to bf16): a kernel reads the tile
// it needs next, computes on the tiles it has, then writes it, so the read's latency hides behind the
// products. Thread i holds column quad i % (kDim/4) of rows i / (kDim/4) + kRowStep·n: a warp reads
// whole rows. Zeros past the sequence; float4 reads when the source allows it (a view may start at
// any float).
template <int kRows, int kDim>
struct TileInRegisters {
  static constexpr int kQuads = kDim / 4;                // float4 per row
  static constexpr int kRowStep = kMmaThreads / kQuads;  // rows between a thread's quads
  static constexpr int kPerThread = kRows / kRowStep;
  static_assert(kMmaThreads % kQuads == 0 && kRows % kRowStep == 0);
  float4 quads[kPerThread];

  __device__ static int first_row() { return static_cast<int>(threadIdx.x) / kQuads; }
  __device__ static int column() { return 4 * (static_cast<int>(threadIdx.x) % kQuads); }

  __device__ void read(const float* x, const Geometry& g, int b, int h, int row0) {
    const bool aligned = reinterpret_cast<uintptr_t>(x) % sizeof(float4) == 0;
    const int t0 = row0 + first_row();
    const float* src = x + g.at(b, t0, h) + column();  // dereferenced only within T
    // Opaque to the compiler, which would otherwise keep a 64-bit pointer per quad and source alive
    // across the kernels' loops (up to 32 registers) instead of stepping one.
    int step = kRowStep * g.heads * kDim;
    asm volatile("" : "+r"(step));
#pragma unroll
    for (int n = 0; n < kPerThread; ++n, src += step)
      quads[n] = t0 + kRowStep * n >= g.seq ? make_float4(0.0f, 0.0f, 0.0f, 0.0f)
                 : aligned                  ? *reinterpret_cast<const float4*>(src)
                                            : make_float4(src[0], src[1], src[2], src[3]);
  }

  __device__ void write(Bf16Tile<kRows, kDim> tile) const {
    constexpr int kStride = Bf16Tile<kRows, kDim>::kStride;
    __nv_bfloat16* first = tile.data + first_row() * kStride + column();
#pragma unroll
    for (int n = 0; n < kPerThread; ++n)
      *reinterpret_cast<uint2*>(first + n * kRowStep * kStride) =
          make_uint2(bf16_pair(quads[n].x, quads[n].y), bf16_pair(quads[n].z, quads[n].w));
  }
};

// ---- Warp products --------------------------------------------------------------------------------

// c = a[r0 … r0+15, :]·bᵀ: the warp's 16 rows of a against every row of b (kCols of them), as kCols/8
// accumulator tiles.
template <int kCols, int kARows, int kBRows, int kDim>
__device__ void multiply_by_transpose(float (&c)[kCols / 8][4], Bf16Tile<kARows, kDim> a, int r0,
                                      Bf16Tile<kBRows, kDim> b) {
  static_assert(kCols == kBRows && kCols % 16 == 0);
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) c[n][i] = 0.0f;
#pragma unroll
  for (int k0 = 0; k0 < kDim; k0 += 16) {
    uint32_t af[4];
    load_a(af, a, r0, k0);
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

// Writes scale·acc, the warp's rows row0 + (g, g+8) of head (b, h) of x [B, T, H, kDim], within T.
template <int kDim>
__device__ void store_warp_rows(const float (&acc)[kDim / 8][4], float scale, float* x, const Geometry& g, int b,
                                int h, int row0) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = row0 + fragment_row() + 8 * half;
    if (t >= g.seq) continue;
    float* row = x + g.at(b, t, h) + fragment_col();
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n) {
      row[8 * n] = acc[n][2 * half] * scale;
      row[8 * n + 1] = acc[n][2 * half + 1] * scale;
    }
  }
}

// ---- Forward --------------------------------------------------------------------------------------

template <int kDim>
struct MmaForwardShared {
  using QueryTile = Bf16Tile<kMmaOwned, kDim>;
  using KeyTile = Bf16Tile<kMmaKeys, kDim>;
  static constexpr size_t kBytes = QueryTile::kBytes + 2 * KeyTile::kBytes;
  QueryTile q;
  KeyTile k, v;
  __device__ explicit MmaForwardShared(__nv_bfloat16* base) : q{base}, k{q.end()}, v{k.end()} {}
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

// Block (x, h, b): query tile gridDim.x − 1 − x (the longest rows first); warp w its rows 16w … 16w+15.
// Per key tile: read the value tile while computing the scores, then the next key tile while
// computing P·V (each written to shared memory after its product, between the two barriers).
template <int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_forward_mma_kernel(const float* q, const float* k, const float* v, Geometry g, float* out,
                                 float* lse) {
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaForwardShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.y, r0 = static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kMmaOwned;
  const float scale_log2 = g.scale * kLog2e;

  {
    TileInRegisters<kMmaOwned, kDim> query_rows;
    TileInRegisters<kMmaKeys, kDim> key_rows;
    query_rows.read(q, g, b, h, q0);
    key_rows.read(k, g, b, h, 0);
    query_rows.write(s.q);
    key_rows.write(s.k);
  }
  __syncthreads();
  // Rows g and g + 8 of the warp's 16: running max, sum and output (accumulator halves 0 and 1).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, acc[kDim / 8][4] = {};
  TileInRegisters<kMmaKeys, kDim> next;  // the value tile, then the next key tile

  const int last_key = min(g.seq - 1, q0 + kMmaOwned - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kMmaKeys) {
    const bool more = k0 + kMmaKeys <= last_key;
    next.read(v, g, b, h, k0);
    float score[kMmaKeys / 8][4];
    multiply_by_transpose<kMmaKeys>(score, s.q, r0, s.k);
    // Key j is visible to row t when j <= t and j < T: the mask is needed only where the tile's last
    // key lies past the warp's first row or past T.
    if (k0 + kMmaKeys - 1 > q0 + r0 || k0 + kMmaKeys > g.seq) mask_future_keys<kMmaKeys>(score, g, k0, q0 + r0);
    online_softmax_step<kMmaKeys, kDim>(score, row_max, row_sum, acc, scale_log2);
    next.write(s.v);  // the previous value tile was read before the last barrier
    __syncthreads();  // the value tile is written, the key tile read
    if (more) next.read(k, g, b, h, k0 + kMmaKeys);
    accumulate_mma_product<kMmaKeys>(acc, score, s.v);
    if (more) next.write(s.k);
    __syncthreads();  // the next key tile is written, the value tile read
  }

  const int64_t lse_row0 = g.row_stats(b, h);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = q0 + r0 + fragment_row() + 8 * half;
    if (t >= g.seq) continue;
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n) {
      acc[n][2 * half] /= row_sum[half];
      acc[n][2 * half + 1] /= row_sum[half];
    }
    // The natural log, as the CPU and the float32 kernels keep it.
    if (fragment_col() == 0) lse[lse_row0 + t] = row_max[half] * g.scale + logf(row_sum[half]);
  }
  store_warp_rows<kDim>(acc, 1.0f, out, g, b, h, q0 + r0);
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

// One query tile of the dK/dV kernel with its rows' lse·log2 e and delta.
template <int kDim>
struct MmaQuerySlot {
  static constexpr int kQueries = kMmaQueries<kDim>;
  using QueryTile = Bf16Tile<kQueries, kDim>;
  static constexpr size_t kBytes = QueryTile::kBytes + 2 * kQueries * sizeof(float);
  static_assert(kBytes % 16 == 0, "slots follow each other, 16-byte aligned for ldmatrix");
  QueryTile q;
  float *lse_log2, *delta;
  __device__ explicit MmaQuerySlot(__nv_bfloat16* base)
      : q{base}, lse_log2{reinterpret_cast<float*>(q.end())}, delta{lse_log2 + kQueries} {}
};

// lse and delta of query q0 + i, held by thread i < kQueries from the global read to the write into a
// query slot (0 past T).
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
  __device__ void write(const MmaQuerySlot<kDim>& slot) const {
    if (threadIdx.x >= kQueries) return;
    slot.lse_log2[threadIdx.x] = lse * kLog2e;
    slot.delta[threadIdx.x] = delta;
  }
};

// The block's keys and values, the current output-gradient tile, and two query slots: the current
// query tile's and the next one's, written while the current one is still read.
template <int kDim>
struct MmaKeyValueGradShared {
  using KeyTile = Bf16Tile<kMmaOwned, kDim>;
  using Slot = MmaQuerySlot<kDim>;
  using QueryTile = typename Slot::QueryTile;
  static constexpr size_t kBytes = 2 * KeyTile::kBytes + QueryTile::kBytes + 2 * Slot::kBytes;
  KeyTile k, v;
  QueryTile dout;
  __nv_bfloat16* slots;
  __device__ explicit MmaKeyValueGradShared(__nv_bfloat16* base)
      : k{base}, v{k.end()}, dout{v.end()}, slots{dout.end()} {}
  // The slot of the block's query tile i (counted from its first).
  __device__ Slot slot(int i) const { return Slot(slots + i % 2 * (Slot::kBytes / sizeof(__nv_bfloat16))); }
};

// Block (x, h, b): keys 64x …, warp w its keys 64x + 16w …; dV = Σ Pᵀ·dO and dK = scale·Σ dSᵀ·Q over
// the query tiles from the block's first key on. The warp computes Pᵀ and dSᵀ directly (as k·qᵀ and
// v·dOᵀ) so that they are A fragments of those products. Per query tile: read its output gradient
// while computing k·qᵀ, then the next query tile and stats during the other three products.
template <int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_dkdv_mma_kernel(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                              const float* delta, Geometry g, float* dk, float* dv) {
  constexpr int kQueries = kMmaQueries<kDim>;
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaKeyValueGradShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.y, r0 = static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows;
  const int k0 = static_cast<int>(blockIdx.x) * kMmaOwned;
  const float scale_log2 = g.scale * kLog2e;

  // k0 is a multiple of kQueries: earlier queries see none of the block's keys.
  {
    TileInRegisters<kMmaOwned, kDim> key_rows, value_rows;
    TileInRegisters<kQueries, kDim> query_rows;
    QueryStatsInRegisters<kDim> stats;
    key_rows.read(k, g, b, h, k0);
    value_rows.read(v, g, b, h, k0);
    query_rows.read(q, g, b, h, k0);
    stats.read(lse, delta, g, b, h, k0);
    key_rows.write(s.k);
    value_rows.write(s.v);
    query_rows.write(s.slot(0).q);
    stats.write(s.slot(0));
  }
  __syncthreads();
  float dk_acc[kDim / 8][4] = {}, dv_acc[kDim / 8][4] = {};
  TileInRegisters<kQueries, kDim> next;  // the output-gradient tile, then the next query tile
  QueryStatsInRegisters<kDim> next_stats;

  for (int q0 = k0, i = 0; q0 < g.seq; q0 += kQueries, ++i) {
    const bool more = q0 + kQueries < g.seq;
    const MmaQuerySlot<kDim> slot = s.slot(i);
    next.read(dout, g, b, h, q0);
    float p[kQueries / 8][4], ds[kQueries / 8][4];  // Pᵀ and dSᵀ: the warp's keys × the tile's queries
    multiply_by_transpose<kQueries>(p, s.k, r0, slot.q);
    next.write(s.dout);  // the previous output-gradient tile was read before the last barrier
    __syncthreads();     // the output-gradient tile is written
    if (more) {
      next.read(q, g, b, h, q0 + kQueries);
      next_stats.read(lse, delta, g, b, h, q0 + kQueries);
    }
    multiply_by_transpose<kQueries>(ds, s.v, r0, s.dout);
    // Key j is visible to query t when j <= t < T: masks only where the warp's last key lies past the
    // tile's first query, or the tile reaches past T.
    const bool masked = k0 + r0 + kWarpRows - 1 > q0 || q0 + kQueries > g.seq;
    const auto* lse_pairs = reinterpret_cast<const float2*>(slot.lse_log2);
    const auto* delta_pairs = reinterpret_cast<const float2*>(slot.delta);
    recompute_p_and_ds_fragments(masked, p, ds, g, scale_log2, [&](int n, int e) {
      // Columns 8n + fragment_col() and the one after: one float2 of each stat.
      const int column = 8 * n + fragment_col();
      const float2 lse_pair = lse_pairs[column / 2], delta_pair = delta_pairs[column / 2];
      return ScoreCoordinates{q0 + column + e % 2, k0 + r0 + fragment_row() + 8 * (e / 2),
                              e % 2 ? lse_pair.y : lse_pair.x, e % 2 ? delta_pair.y : delta_pair.x};
    });
    accumulate_mma_product<kQueries>(dv_acc, p, s.dout);
    accumulate_mma_product<kQueries>(dk_acc, ds, slot.q);
    if (more) {  // into the other slot, whose tile was read before the last barrier
      next.write(s.slot(i + 1).q);
      next_stats.write(s.slot(i + 1));
    }
    __syncthreads();  // the next query tile is written, the output-gradient tile read
  }
  store_warp_rows<kDim>(dk_acc, g.scale, dk, g, b, h, k0 + r0);
  store_warp_rows<kDim>(dv_acc, 1.0f, dv, g, b, h, k0 + r0);
}

// The block's queries with their output gradient, and one key tile and one value tile.
template <int kDim>
struct MmaQueryGradShared {
  using QueryTile = Bf16Tile<kMmaOwned, kDim>;
  using KeyTile = Bf16Tile<kMmaKeys, kDim>;
  static constexpr size_t kBytes = 2 * QueryTile::kBytes + 2 * KeyTile::kBytes;
  QueryTile q, dout;
  KeyTile k, v;
  __device__ explicit MmaQueryGradShared(__nv_bfloat16* base) : q{base}, dout{q.end()}, k{dout.end()}, v{k.end()} {}
};

// Block (x, h, b): query tile gridDim.x − 1 − x, warp w its rows 16w …; dQ = scale·Σ_j dS·K over the
// key tiles up to the causal limit. Per key tile: read it while computing dO·vᵀ, then the next value
// tile during q·kᵀ and dS·K (so each tile is read on one side of the step's first barrier only).
template <int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_dq_mma_kernel(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                            const float* delta, Geometry g, float* dq) {
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaQueryGradShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.y, r0 = static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kMmaOwned;
  const float scale_log2 = g.scale * kLog2e;

  // lse·log2 e and delta of rows g and g + 8 of the warp's 16 (0 past T).
  float row_lse_log2[2], row_delta[2], dq_acc[kDim / 8][4] = {};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = q0 + r0 + fragment_row() + 8 * half;
    row_lse_log2[half] = t < g.seq ? lse[g.row_stats(b, h) + t] * kLog2e : 0.0f;
    row_delta[half] = t < g.seq ? delta[g.row_stats(b, h) + t] : 0.0f;
  }
  {
    TileInRegisters<kMmaOwned, kDim> query_rows, dout_rows;
    TileInRegisters<kMmaKeys, kDim> value_rows;
    query_rows.read(q, g, b, h, q0);
    dout_rows.read(dout, g, b, h, q0);
    value_rows.read(v, g, b, h, 0);
    query_rows.write(s.q);
    dout_rows.write(s.dout);
    value_rows.write(s.v);
  }
  __syncthreads();
  TileInRegisters<kMmaKeys, kDim> next;  // the key tile, then the next value tile

  const int last_key = min(g.seq - 1, q0 + kMmaOwned - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kMmaKeys) {
    const bool more = k0 + kMmaKeys <= last_key;
    next.read(k, g, b, h, k0);
    float p[kMmaKeys / 8][4], ds[kMmaKeys / 8][4];
    multiply_by_transpose<kMmaKeys>(ds, s.dout, r0, s.v);  // dP, made dS below
    next.write(s.k);  // the previous key tile was read before the last barrier
    __syncthreads();  // the key tile is written, the value tile read
    if (more) next.read(v, g, b, h, k0 + kMmaKeys);
    multiply_by_transpose<kMmaKeys>(p, s.q, r0, s.k);
    // Key j is visible to query t when j <= t < T: masks only where the tile's last key lies past the
    // warp's first query, or the warp's rows reach past T.
    const bool masked = k0 + kMmaKeys - 1 > q0 + r0 || q0 + r0 + kWarpRows > g.seq;
    recompute_p_and_ds_fragments(masked, p, ds, g, scale_log2, [&](int n, int e) {
      const int half = e / 2;
      return ScoreCoordinates{q0 + r0 + fragment_row() + 8 * half, k0 + 8 * n + fragment_col() + e % 2,
                              row_lse_log2[half], row_delta[half]};
    });
    accumulate_mma_product<kMmaKeys>(dq_acc, ds, s.k);
    if (more) next.write(s.v);
    __syncthreads();  // the next value tile is written, the key tile read
  }
  store_warp_rows<kDim>(dq_acc, g.scale, dq, g, b, h, q0 + r0);
}

// ---- Launches -------------------------------------------------------------------------------------

// Whether a head of head_dim has a tensor-core instance.
bool has_mma_instance(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

// Calls launch(std::integral_constant<int, head_dim>) for a head dim with a tensor-core instance.
template <class Launch>
void with_mma_instance(int64_t head_dim, Launch&& launch) {
  if (head_dim == 64) return launch(std::integral_constant<int, 64>{});
  EG_ASSERT(head_dim == 128, "no tensor-core attention instance for head_dim ", head_dim);
  launch(std::integral_constant<int, 128>{});
}

void attention_forward_mma(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                           const AttentionDims& dims, const Geometry& g) {
  with_mma_instance(dims.head_dim, [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    launch_on_tiles(attention_forward_mma_kernel<kDim>, kMmaOwned, kMmaThreads, MmaForwardShared<kDim>::kBytes, dims,
                    q.data<float>(), k.data<float>(), v.data<float>(), g, out.data<float>(), lse.data<float>());
    EG_CUDA_CHECK_LAUNCH("attention_forward_mma_kernel");
  });
}

void attention_backward_mma(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                            const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const AttentionDims& dims,
                            const Geometry& g) {
  with_mma_instance(dims.head_dim, [&](auto instance) {
    constexpr int kDim = decltype(instance)::value;
    const Tensor delta = row_deltas(dout, out, dims, g, /*round_dout=*/true);
    launch_on_tiles(attention_dkdv_mma_kernel<kDim>, kMmaOwned, kMmaThreads, MmaKeyValueGradShared<kDim>::kBytes,
                    dims, dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), lse.data<float>(),
                    delta.data<float>(), g, dk.data<float>(), dv.data<float>());
    EG_CUDA_CHECK_LAUNCH("attention_dkdv_mma_kernel");
    launch_on_tiles(attention_dq_mma_kernel<kDim>, kMmaOwned, kMmaThreads, MmaQueryGradShared<kDim>::kBytes, dims,
                    dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), lse.data<float>(),
                    delta.data<float>(), g, dq.data<float>());
    EG_CUDA_CHECK_LAUNCH("attention_dq_mma_kernel");
  });
}

}  // namespace

}  // namespace engram::kernels::cuda
