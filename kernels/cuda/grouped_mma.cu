// Grouped expert products in one launch with mma.sync (kernels/cuda/grouped_mma.h; the group layouts
// and the table are in grouped_mma_common.cuh). Each block computes one 128 × 128 tile of one group's
// output. Tiles of 32 along k stream through a ring of kStages shared-memory stages filled by
// cp.async, so the copies of the next kStages − 1 tiles are in flight while one multiplies
// (mma.sync m16n8k16, bf16 in, float32 accumulate; mma_fragments.cuh). 4 warps, each owning a
// 64 × 64 piece of the tile: 8 ldmatrix per 32 mma per 16 of k, where 64 × 32 pieces needed 6 per
// 16. Every output element is one thread's sum over k in a fixed order, so results repeat bit for
// bit; no split-k, no atomics. A bf16 output (beta 0) is that float32 sum rounded to nearest even.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <numeric>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_mma.h"
#include "kernels/cuda/grouped_mma_common.cuh"
#include "kernels/cuda/mma_fragments.cuh"
#include "kernels/gemm_groups.h"

namespace engram::kernels::cuda {

namespace {

constexpr int kTileM = kGroupedTileM, kTileN = kGroupedTileN, kTileK = 32;
constexpr int kStages = 4;  // 4 × 20 KB of shared memory: two blocks fit on an SM
constexpr int kGemmWarps = 4, kGemmThreads = kGemmWarps * kWarpSize;
constexpr int kWarpM = 64, kWarpN = 64;  // warps: 2 along m, 2 along n

// Rows row0 … row0+kRows−1, columns col0 … col0+kCols−1 of a row-major bf16 matrix (row length ld,
// `rows` × `cols` valid, cols a multiple of 8) into a tile, zeros outside.
template <int kRows, int kCols>
__device__ void load_tile(Bf16Tile<kRows, kCols> tile, const __nv_bfloat16* base, int ld, int row0, int rows,
                          int col0, int cols) {
  constexpr int kChunksPerRow = kCols / 8, kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kGemmThreads == 0);
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < kChunks; i += kGemmThreads) {
    const int r = i / kChunksPerRow, col = i % kChunksPerRow * 8;
    copy_chunk(tile.address(r, col), base, ld, row0 + r, rows, col0 + col, cols);
  }
}

template <bool kWeightGrad, bool kBRowsK>
struct StageTiles {
  using ATile = std::conditional_t<kWeightGrad, Bf16Tile<kTileK, kTileM>, Bf16Tile<kTileM, kTileK>>;
  using BTile = std::conditional_t<kBRowsK, Bf16Tile<kTileK, kTileN>, Bf16Tile<kTileN, kTileK>>;
  static constexpr size_t kBytes = ATile::kBytes + BTile::kBytes;
  static constexpr size_t kSharedBytes = kStages * kBytes;
  ATile a;
  BTile b;
  __device__ StageTiles(__nv_bfloat16* shared, int stage)
      : a{shared + stage * (kBytes / sizeof(__nv_bfloat16))}, b{a.end()} {}
};

// kWeightGrad: the weight-gradient layout (A read k-major); kBRowsK: b stored [k, n] (else [n, k]); Out:
// c's elements (float, or __nv_bfloat16 with beta 0).
template <bool kWeightGrad, bool kBRowsK, class Out>
__global__ void __launch_bounds__(kGemmThreads, 2) grouped_mma_kernel(const __grid_constant__ GroupedMmaParams p) {
  using Stage = StageTiles<kWeightGrad, kBRowsK>;
  extern __shared__ __align__(16) __nv_bfloat16 stage_storage[];

  const GroupedTile<Out> t = locate_tile<kWeightGrad, Out>(p);
  const int m = t.m, n = t.n, k = t.k, m0 = t.m0, n0 = t.n0;
  Out* c = t.c;

  // Starts the copies of k tile kt into its stage, if there is such a tile, as one commit group
  // (empty past the end, so that every thread always has the same number of groups in flight).
  const int k_tiles = k_tiles_of<kTileK>(t);
  const auto load_stage = [&](int kt) {
    if (kt < k_tiles) {
      const Stage s(stage_storage, kt % kStages);
      const KTileSource src = k_tile_source<kTileK>(t, kt);
      if constexpr (kWeightGrad) {
        load_tile(s.a, src.a, p.lda, src.k0, k, m0, m);
      } else {
        load_tile(s.a, src.a, p.lda, m0, m, src.k0, k);
      }
      if constexpr (kBRowsK) {
        load_tile(s.b, src.b, p.ldb, src.k0, k, n0, n);
      } else {
        load_tile(s.b, src.b, p.ldb, n0, n, src.k0, k);
      }
    }
    cp_async_commit();
  };

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int wm = warp / (kTileN / kWarpN) * kWarpM, wn = warp % (kTileN / kWarpN) * kWarpN;
  float acc[kWarpM / 16][kWarpN / 8][4] = {};
  for (int kt = 0; kt < kStages - 1; ++kt) load_stage(kt);
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of tile kt have landed
    __syncthreads();               // everyone's have, and everyone is done with tile kt − 1's stage
    load_stage(kt + kStages - 1);  // into tile kt − 1's stage (past the end: only empty groups remain)
    const Stage s(stage_storage, kt % kStages);
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      uint32_t af[kWarpM / 16][4], bf[kWarpN / 16][4];
#pragma unroll
      for (int i = 0; i < kWarpM / 16; ++i) {
        if constexpr (kWeightGrad) {
          load_a_of_transpose(af[i], s.a, wm + 16 * i, kk);
        } else {
          load_a(af[i], s.a, wm + 16 * i, kk);
        }
      }
#pragma unroll
      for (int j = 0; j < kWarpN / 16; ++j) {
        if constexpr (kBRowsK) {
          load_b(bf[j], s.b, kk, wn + 16 * j);
        } else {
          load_b_of_transpose(bf[j], s.b, wn + 16 * j, kk);
        }
      }
#pragma unroll
      for (int i = 0; i < kWarpM / 16; ++i)
#pragma unroll
        for (int j = 0; j < kWarpN / 16; ++j) mma_two_tiles(acc[i], 16 * j, af[i], bf[j]);
    }
  }

  // Lane (g, c) holds rows g and g + 8, columns 2c and 2c + 1 of each 16 × 8 accumulator tile; n is a
  // multiple of 8, so a pair is inside or outside together, and c is 16-byte aligned, so a pair is
  // one 8-byte (float) or 4-byte (bf16) access.
  const auto pair_at = [&](int i, int j, int half) -> Out* {
    const int row = m0 + wm + 16 * i + fragment_row() + 8 * half, col = n0 + wn + 8 * j + fragment_col();
    return row < m && col < n ? c + int64_t{row} * p.ldc + col : nullptr;
  };
  if constexpr (std::is_same_v<Out, float>) {  // a bf16 c comes with beta 0
    if (p.beta != 0.0f) {
      // Every read of c before the first write, so that the reads are in flight together (interleaved
      // with the writes, each would wait for the one before it).
#pragma unroll
      for (int i = 0; i < kWarpM / 16; ++i)
#pragma unroll
        for (int j = 0; j < kWarpN / 8; ++j)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            if (const float* out = pair_at(i, j, half)) {
              const float2 old = *reinterpret_cast<const float2*>(out);
              acc[i][j][2 * half] += p.beta * old.x;
              acc[i][j][2 * half + 1] += p.beta * old.y;
            }
          }
    }
  }
#pragma unroll
  for (int i = 0; i < kWarpM / 16; ++i)
#pragma unroll
    for (int j = 0; j < kWarpN / 8; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        if (Out* out = pair_at(i, j, half)) store_pair(out, acc[i][j][2 * half], acc[i][j][2 * half + 1]);
}

// Whether the one-launch kernel takes these tensors (see grouped_mma.h): `out` in float32, or in bf16
// where bf16_out_allowed.
bool takes(const Tensor& x, const Tensor& y, const Tensor& out, const std::vector<int64_t>& offsets,
           bool bf16_out_allowed) {
  return x.dtype() == DType::BF16 && y.dtype() == DType::BF16 &&
         (out.dtype() == DType::F32 || (bf16_out_allowed && out.dtype() == DType::BF16)) &&
         static_cast<int64_t>(offsets.size()) <= kGroupedMmaMaxGroups + 1 && x.cols() % 8 == 0 &&
         y.cols() % 8 == 0 && out.cols() % 8 == 0 && aligned_16(x) && aligned_16(y) && aligned_16(out) &&
         x.numel() < INT_MAX && y.numel() < INT_MAX && out.numel() < INT_MAX;
}

// The group table: offsets as int, and the groups' first blocks given their numbers of blocks. With
// longest_first the groups with the most rows come first (ties in group order): weight gradients,
// whose blocks take as long as their group has rows, then end together instead of waiting for the
// largest group's blocks to start last.
template <class TilesOf>
void fill_groups(GroupedMmaParams& p, const std::vector<int64_t>& offsets, TilesOf&& tiles_of, bool longest_first) {
  p.groups = static_cast<int>(offsets.size()) - 1;
  for (int g = 0; g <= p.groups; ++g) p.offsets[g] = static_cast<int>(offsets[g]);
  const auto rows = [&](int g) { return p.offsets[g + 1] - p.offsets[g]; };
  std::iota(p.order, p.order + p.groups, 0);
  if (longest_first) std::stable_sort(p.order, p.order + p.groups, [&](int x, int y) { return rows(x) > rows(y); });
  p.tile_start[0] = 0;
  for (int i = 0; i < p.groups; ++i) p.tile_start[i + 1] = p.tile_start[i] + tiles_of(rows(p.order[i]));
}

int tiles(int rows, int tile) { return (rows + tile - 1) / tile; }

// bf16_c: p.c is __nv_bfloat16 (products only), else float.
void launch(const GroupedMmaParams& p, bool weight_grad, bool b_rows_k, bool bf16_c, GroupedMmaKernel kernel) {
  if (p.tile_start[p.groups] == 0) return;
  if (kernel == GroupedMmaKernel::Fastest && grouped_wgmma_available()) {
    return launch_grouped_wgmma(p, weight_grad, b_rows_k, bf16_c);
  }
  launch_instance(weight_grad, b_rows_k, bf16_c, [&]<bool kWeightGrad, bool kBRowsK, class Out>() {
    launch_with_shared(grouped_mma_kernel<kWeightGrad, kBRowsK, Out>, dim3(p.tile_start[p.groups]), kGemmThreads,
                       StageTiles<kWeightGrad, kBRowsK>::kSharedBytes, p);
  });
  EG_CUDA_CHECK_LAUNCH("grouped_mma_kernel");
}

// c_g = a_g · op(b[g]) (+ a2_g · op(b2[g]) when a2) + beta·c_g, if the kernels take it.
bool products(const Tensor& a, const Tensor& b, const Tensor* a2, const Tensor* b2, bool trans_b, Tensor& c,
              const std::vector<int64_t>& offsets, float beta, GroupedMmaKernel kernel) {
  // A bf16 c only with beta 0, what the MoE's bf16 outputs need: accumulating into one is left to the
  // per-group path.
  const bool bf16_c_allowed = beta == 0.0f;
  if (!takes(a, b, c, offsets, bf16_c_allowed) || (a2 && !takes(*a2, *b2, c, offsets, bf16_c_allowed))) return false;
  gemm_groups::check_offsets(offsets, b, a.rows(), "grouped_gemm");
  const int64_t k = a.cols(), n = trans_b ? b.dim(1) : b.dim(2);
  if (k == 0) return false;  // nothing to multiply: the per-group path writes beta·c
  EG_ASSERT(c.rows() == a.rows() && c.cols() == n && (trans_b ? b.dim(2) : b.dim(1)) == k,
            "grouped_gemm shapes: a ", shape_str(a.shape()), ", b ", shape_str(b.shape()), trans_b ? "ᵀ" : "",
            ", c ", shape_str(c.shape()));
  EG_ASSERT(!a2 || (a2->shape() == a.shape() && b2->shape() == b.shape()), "grouped_gemm_pair: a ",
            shape_str(a.shape()), ", b ", shape_str(b.shape()), " and a2 ", shape_str(a2->shape()), ", b2 ",
            shape_str(b2->shape()), " must match");
  GroupedMmaParams p{};
  p.a = static_cast<const __nv_bfloat16*>(a.raw());
  p.b = static_cast<const __nv_bfloat16*>(b.raw());
  p.a2 = a2 ? static_cast<const __nv_bfloat16*>(a2->raw()) : nullptr;
  p.b2 = b2 ? static_cast<const __nv_bfloat16*>(b2->raw()) : nullptr;
  p.c = c.raw();
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.lda = p.k;
  p.ldb = static_cast<int>(b.dim(2));
  p.ldc = p.n;
  p.b_group_stride = b.dim(1) * b.dim(2);
  p.beta = beta;
  const int tiles_n = tiles(p.n, kTileN);
  fill_groups(p, offsets, [&](int rows) { return tiles(rows, kTileM) * tiles_n; }, false);
  launch(p, false, !trans_b, c.dtype() == DType::BF16, kernel);
  return true;
}

}  // namespace

bool grouped_wgmma_available() {
#ifdef ENGRAM_HAVE_SM90A
  static const bool hopper = [] {
    int major = 0, minor = 0;
    EG_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, cuda_context().device));
    EG_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, cuda_context().device));
    return major == 9 && minor == 0;
  }();
  return hopper;
#else
  return false;
#endif
}

bool grouped_mma(const Tensor& a, const Tensor& b, bool trans_b, Tensor& c, const std::vector<int64_t>& offsets,
                 float beta, GroupedMmaKernel kernel) {
  return products(a, b, nullptr, nullptr, trans_b, c, offsets, beta, kernel);
}

bool grouped_mma_pair(const Tensor& a, const Tensor& b, const Tensor& a2, const Tensor& b2, bool trans_b, Tensor& c,
                      const std::vector<int64_t>& offsets, GroupedMmaKernel kernel) {
  return products(a, b, &a2, &b2, trans_b, c, offsets, 0.0f, kernel);
}

bool grouped_mma_wgrad(const Tensor& dc, const Tensor& a, Tensor& db, const std::vector<int64_t>& offsets,
                       GroupedMmaKernel kernel) {
  if (!takes(dc, a, db, offsets, /*bf16_out_allowed=*/false)) return false;
  gemm_groups::check_offsets(offsets, db, a.rows(), "grouped_gemm_wgrad");
  EG_ASSERT(dc.rows() == a.rows() && dc.cols() == db.dim(1) && a.cols() == db.dim(2),
            "grouped_gemm_wgrad shapes: dc ", shape_str(dc.shape()), ", a ", shape_str(a.shape()), ", db ",
            shape_str(db.shape()));
  GroupedMmaParams p{};
  p.a = static_cast<const __nv_bfloat16*>(dc.raw());
  p.b = static_cast<const __nv_bfloat16*>(a.raw());
  p.c = db.raw();
  p.m = static_cast<int>(db.dim(1));
  p.n = static_cast<int>(db.dim(2));
  p.lda = p.m;
  p.ldb = p.n;
  p.ldc = p.n;
  p.c_group_stride = db.dim(1) * db.dim(2);
  p.beta = 1.0f;
  const int per_group = tiles(p.m, kTileM) * tiles(p.n, kTileN);
  fill_groups(p, offsets, [&](int rows) { return rows > 0 ? per_group : 0; }, true);
  launch(p, true, true, false, kernel);
  return true;
}

}  // namespace engram::kernels::cuda
