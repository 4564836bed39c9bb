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
//   rows of an 8×8 matrix fall in distinct banks. Blocks of 4 warps; shared memory per block for d_h
//   64 / 128: forward 27 / 51 KB (q, k, v tiles), dK/dV 36.5 / 51.3 KB, dQ 36 / 68 KB.
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

// Rows row0 … row0+kRows−1 of head (b, h) of each source [B, T, H, kDim] into its tile, rounded to
// bf16; zeros past the sequence. Reads float4 when a source allows it (a view may start at any float).
// Reads are issued in batches of up to 16 per thread before the batch's shared-memory writes: the
// compiler cannot tell that sources and tiles never alias, so interleaved, each read would wait for
// the write before it.
template <int kCount, int kRows, int kDim>
__device__ void load_rows_bf16(const Bf16Tile<kRows, kDim> (&tiles)[kCount], const float* const (&sources)[kCount],
                               const Geometry& g, int b, int h, int row0) {
  constexpr int kQuads = kDim / 4, kPerTile = kRows * kQuads / kMmaThreads;
  constexpr int kItems = kCount * kPerTile, kBatch = kItems < 16 ? kItems : 16;
  static_assert(kRows * kQuads % kMmaThreads == 0 && kItems % kBatch == 0);
#pragma unroll
  for (int i0 = 0; i0 < kItems; i0 += kBatch) {
    float4 v[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      // Item i0 + i: quad (i0 + i) % kPerTile of the thread's share of source (i0 + i) / kPerTile.
      const float* x = sources[(i0 + i) / kPerTile];
      const int e = static_cast<int>(threadIdx.x) + (i0 + i) % kPerTile * kMmaThreads, t = row0 + e / kQuads;
      const float* src = x + g.at(b, t, h) + 4 * (e % kQuads);
      v[i] = t >= g.seq ? make_float4(0.0f, 0.0f, 0.0f, 0.0f)
             : reinterpret_cast<uintptr_t>(x) % sizeof(float4) == 0
                 ? *reinterpret_cast<const float4*>(src)
                 : make_float4(src[0], src[1], src[2], src[3]);
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int e = static_cast<int>(threadIdx.x) + (i0 + i) % kPerTile * kMmaThreads;
      __nv_bfloat16* row = tiles[(i0 + i) / kPerTile].data + e / kQuads * Bf16Tile<kRows, kDim>::kStride;
      auto* dst = reinterpret_cast<__nv_bfloat162*>(row + 4 * (e % kQuads));
      dst[0] = __floats2bfloat162_rn(v[i].x, v[i].y);
      dst[1] = __floats2bfloat162_rn(v[i].z, v[i].w);
    }
  }
}

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

// Block (x, h, b): query tile gridDim.x − 1 − x (the longest rows first); warp w its rows 16w … 16w+15.
template <int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_forward_mma_kernel(const float* q, const float* k, const float* v, Geometry g, float* out,
                                 float* lse) {
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaForwardShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.y, r0 = static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kMmaOwned;

  load_rows_bf16<1>({s.q}, {q}, g, b, h, q0);
  // Rows g and g + 8 of the warp's 16: running max, sum and output (accumulator halves 0 and 1).
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, acc[kDim / 8][4] = {};

  const int last_key = min(g.seq - 1, q0 + kMmaOwned - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kMmaKeys) {
    __syncthreads();  // the previous key and value tiles are read
    load_rows_bf16<2>({s.k, s.v}, {k, v}, g, b, h, k0);
    __syncthreads();
    float score[kMmaKeys / 8][4];
    multiply_by_transpose<kMmaKeys>(score, s.q, r0, s.k);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // Key j is visible to row t when j <= t (and j < T: rows past T are padding, never written).
      const int t = q0 + r0 + fragment_row() + 8 * half;
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < kMmaKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = k0 + 8 * n + fragment_col() + e;
          float& x = score[n][2 * half + e];
          x = key <= t && key < g.seq ? x * g.scale : -INFINITY;
          tile_max = fmaxf(tile_max, x);
        }
      // Finite: key 0, in the first tile, is visible to every row.
      const float new_max = fmaxf(row_max[half], quad_reduce(tile_max, Max{}));
      const float rescale = expf(row_max[half] - new_max);
      float tile_sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kMmaKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = score[n][2 * half + e];
          x = expf(x - new_max);  // now the unnormalized probability
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
    accumulate_mma_product<kMmaKeys>(acc, score, s.v);
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
    if (fragment_col() == 0) lse[lse_row0 + t] = row_max[half] + logf(row_sum[half]);
  }
  store_warp_rows<kDim>(acc, 1.0f, out, g, b, h, q0 + r0);
}

// ---- Backward -------------------------------------------------------------------------------------

// (query, key, lse, delta) of one accumulator element of the scores.
struct ScoreCoordinates {
  int query, key;
  float lse, delta;
};

// P = exp(scale·s − lse) and dS = P ⊙ (dp − delta) in place on the warp's accumulator tiles of
// s = q·kᵀ and dp = dO·vᵀ (or of their transposes); coordinates(n, i) says where element i of tile n
// lies. P is 0 where the key is masked and for queries past T, so those add nothing to dK, dV or dQ.
template <int kTiles, class Coordinates>
__device__ void recompute_p_and_ds_fragments(float (&s)[kTiles][4], float (&dp)[kTiles][4], const Geometry& g,
                                             Coordinates&& coordinates) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const ScoreCoordinates at = coordinates(n, i);
      s[n][i] = at.key <= at.query && at.query < g.seq ? expf(s[n][i] * g.scale - at.lse) : 0.0f;
      dp[n][i] = s[n][i] * (dp[n][i] - at.delta);
    }
}

// The block's keys and values, the current query tile with its output gradient, and their lse and delta.
template <int kDim>
struct MmaKeyValueGradShared {
  static constexpr int kQueries = kMmaQueries<kDim>;
  using KeyTile = Bf16Tile<kMmaOwned, kDim>;
  using QueryTile = Bf16Tile<kQueries, kDim>;
  static constexpr size_t kBytes = 2 * KeyTile::kBytes + 2 * QueryTile::kBytes + 2 * kQueries * sizeof(float);
  KeyTile k, v;
  QueryTile q, dout;
  float *lse, *delta;
  __device__ explicit MmaKeyValueGradShared(__nv_bfloat16* base)
      : k{base},
        v{k.end()},
        q{v.end()},
        dout{q.end()},
        lse{reinterpret_cast<float*>(dout.end())},
        delta{lse + kQueries} {}
};

// Block (x, h, b): keys 64x …, warp w its keys 64x + 16w …; dV = Σ Pᵀ·dO and dK = scale·Σ dSᵀ·Q over
// the query tiles from the block's first key on. The warp computes Pᵀ and dSᵀ directly (as k·qᵀ and
// v·dOᵀ) so that they are A fragments of those products.
template <int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_dkdv_mma_kernel(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                              const float* delta, Geometry g, float* dk, float* dv) {
  constexpr int kQueries = kMmaQueries<kDim>;
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaKeyValueGradShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.y, r0 = static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows;
  const int k0 = static_cast<int>(blockIdx.x) * kMmaOwned;
  const int64_t stats_row0 = g.row_stats(b, h);

  load_rows_bf16<2>({s.k, s.v}, {k, v}, g, b, h, k0);
  float dk_acc[kDim / 8][4] = {}, dv_acc[kDim / 8][4] = {};

  // k0 is a multiple of kQueries: earlier queries see none of the block's keys.
  for (int q0 = k0; q0 < g.seq; q0 += kQueries) {
    __syncthreads();  // the previous query tile and its stats are read
    // Thread i < kQueries moves the stats of query q0 + i (read first, like the tiles' rows).
    const int t = q0 + static_cast<int>(threadIdx.x);
    const bool moves_stats = threadIdx.x < kQueries, in_sequence = moves_stats && t < g.seq;
    const float query_lse = in_sequence ? lse[stats_row0 + t] : 0.0f;
    const float query_delta = in_sequence ? delta[stats_row0 + t] : 0.0f;
    load_rows_bf16<2>({s.q, s.dout}, {q, dout}, g, b, h, q0);
    if (moves_stats) {
      s.lse[threadIdx.x] = query_lse;
      s.delta[threadIdx.x] = query_delta;
    }
    __syncthreads();
    float p[kQueries / 8][4], ds[kQueries / 8][4];  // Pᵀ and dSᵀ: the warp's keys × the tile's queries
    multiply_by_transpose<kQueries>(p, s.k, r0, s.q);
    multiply_by_transpose<kQueries>(ds, s.v, r0, s.dout);
    recompute_p_and_ds_fragments(p, ds, g, [&](int n, int i) {
      const int column = 8 * n + fragment_col() + i % 2;
      return ScoreCoordinates{q0 + column, k0 + r0 + fragment_row() + 8 * (i / 2), s.lse[column], s.delta[column]};
    });
    accumulate_mma_product<kQueries>(dv_acc, p, s.dout);
    accumulate_mma_product<kQueries>(dk_acc, ds, s.q);
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
// key tiles up to the causal limit.
template <int kDim>
__global__ void __launch_bounds__(kMmaThreads)
    attention_dq_mma_kernel(const float* dout, const float* q, const float* k, const float* v, const float* lse,
                            const float* delta, Geometry g, float* dq) {
  extern __shared__ __align__(16) __nv_bfloat16 mma_shared[];
  const MmaQueryGradShared<kDim> s(mma_shared);
  const int b = blockIdx.z, h = blockIdx.y, r0 = static_cast<int>(threadIdx.x) / kWarpSize * kWarpRows;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kMmaOwned;

  load_rows_bf16<2>({s.q, s.dout}, {q, dout}, g, b, h, q0);
  // lse and delta of rows g and g + 8 of the warp's 16 (0 past T).
  float row_lse[2], row_delta[2], dq_acc[kDim / 8][4] = {};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = q0 + r0 + fragment_row() + 8 * half;
    row_lse[half] = t < g.seq ? lse[g.row_stats(b, h) + t] : 0.0f;
    row_delta[half] = t < g.seq ? delta[g.row_stats(b, h) + t] : 0.0f;
  }

  const int last_key = min(g.seq - 1, q0 + kMmaOwned - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kMmaKeys) {
    __syncthreads();  // the previous key and value tiles are read
    load_rows_bf16<2>({s.k, s.v}, {k, v}, g, b, h, k0);
    __syncthreads();
    float p[kMmaKeys / 8][4], ds[kMmaKeys / 8][4];
    multiply_by_transpose<kMmaKeys>(p, s.q, r0, s.k);
    multiply_by_transpose<kMmaKeys>(ds, s.dout, r0, s.v);
    recompute_p_and_ds_fragments(p, ds, g, [&](int n, int i) {
      const int half = i / 2;
      return ScoreCoordinates{q0 + r0 + fragment_row() + 8 * half, k0 + 8 * n + fragment_col() + i % 2,
                              row_lse[half], row_delta[half]};
    });
    accumulate_mma_product<kMmaKeys>(dq_acc, ds, s.k);
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
