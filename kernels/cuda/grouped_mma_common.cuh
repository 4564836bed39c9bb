#pragma once
// What the two grouped-product kernels share (included by grouped_mma.cu and grouped_wgmma.cu only):
// the group table in the kernel parameters, how a block finds its group and tile, its copies and
// stores, and which kernel instance a launch takes.
// Both kernels cut every group's output into 128 × 128 tiles, one block each, so one table of first
// blocks serves both.
//
// Two layouts of the groups:
// - products (forward, and the backward's row gradients): group g owns rows [o_g, o_{g+1}) of a and
//   c, and b[g] is [n, k] (trans_b) or [k, n]: m varies per group, n and k are fixed;
// - weight gradients: group g owns rows [o_g, o_{g+1}) of dc and a, which are its k; db[g] is
//   [m, n] and A = dcᵀ is read k-major: k varies per group, m and n are fixed.
// The output's element type is a template parameter of the kernels (Out: float, or __nv_bfloat16 for
// products with beta 0), so the float instances compile to the same code as without bf16 outputs.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/grouped_mma.h"

namespace engram::kernels::cuda {

constexpr int kGroupedTileM = 128, kGroupedTileN = 128;

struct GroupedMmaParams {
  const __nv_bfloat16* a;
  const __nv_bfloat16* b;
  const __nv_bfloat16* a2;  // products only: null, or the second pair of operands (shaped like a, b)
  const __nv_bfloat16* b2;  // whose product is added (grouped_mma_pair)
  void* c;                  // Out: float, or __nv_bfloat16 (products with beta 0 only)
  int m, n, k;              // the fixed ones of the layout (m of weight gradients, k of products)
  int lda, ldb, ldc;        // row lengths in elements
  int64_t b_group_stride;   // products: elements between b[g] and b[g+1]
  int64_t c_group_stride;   // weight gradients: elements between db[g] and db[g+1]
  float beta;
  int groups;
  int offsets[kGroupedMmaMaxGroups + 1];     // the groups' first rows
  int order[kGroupedMmaMaxGroups];           // the groups in the order their blocks come
  int tile_start[kGroupedMmaMaxGroups + 1];  // the first block of each group in that order
};

// Kernel parameters may take 4 KB: the group table must fit.
static_assert(sizeof(GroupedMmaParams) <= 4096, "the group table outgrows the kernel parameters");

// Device helpers of both kernels, in each translation unit (cp_async.cuh's helpers are too).
namespace {

// The tile a block computes: its group's sizes, the tile's first row and column of the group's
// output, and the group's a, b (and a2, b2) and c.
template <class Out>
struct GroupedTile {
  int m, n, k, m0, n0;
  const __nv_bfloat16* a;  // rows m (products) or k (weight gradients)
  const __nv_bfloat16* b;
  const __nv_bfloat16* a2;  // null unless a pair
  const __nv_bfloat16* b2;
  Out* c;
};

// Where k tile kt of a product (kTileK wide) comes from: tiles past the first operands' k come from
// a2 and b2 (a pair), from k 0 again.
struct KTileSource {
  const __nv_bfloat16* a;
  const __nv_bfloat16* b;
  int k0;
};
template <int kTileK, class Out>
__device__ inline int k_tiles_of(const GroupedTile<Out>& t) {
  const int tiles = (t.k + kTileK - 1) / kTileK;
  return t.a2 ? 2 * tiles : tiles;
}
template <int kTileK, class Out>
__device__ inline KTileSource k_tile_source(const GroupedTile<Out>& t, int kt) {
  const int first_tiles = (t.k + kTileK - 1) / kTileK;
  if (kt < first_tiles) return {t.a, t.b, kt * kTileK};
  return {t.a2, t.b2, (kt - first_tiles) * kTileK};
}

template <bool kWeightGrad, class Out>
__device__ inline GroupedTile<Out> locate_tile(const GroupedMmaParams& p) {
  // This block's place in the order: the last whose first block is at most blockIdx.x (empty groups
  // have none).
  const int block = static_cast<int>(blockIdx.x);
  const int place = last_start_at_most(p.tile_start, p.groups, block);
  const int g = p.order[place];
  const int first = p.offsets[g], count = p.offsets[g + 1] - first;
  GroupedTile<Out> t;
  t.m = kWeightGrad ? p.m : count;
  t.k = kWeightGrad ? count : p.k;
  t.n = p.n;
  const int tiles_n = (t.n + kGroupedTileN - 1) / kGroupedTileN, index = block - p.tile_start[place];
  t.m0 = index / tiles_n * kGroupedTileM;
  t.n0 = index % tiles_n * kGroupedTileN;
  t.a = p.a + int64_t{first} * p.lda;
  t.b = kWeightGrad ? p.b + int64_t{first} * p.ldb : p.b + g * p.b_group_stride;
  t.a2 = kWeightGrad || !p.a2 ? nullptr : p.a2 + int64_t{first} * p.lda;
  t.b2 = kWeightGrad || !p.b2 ? nullptr : p.b2 + g * p.b_group_stride;
  Out* const c = static_cast<Out*>(p.c);
  t.c = kWeightGrad ? c + g * p.c_group_stride : c + int64_t{first} * p.ldc;
  return t;
}

// Copies the 8 bf16 at (row, column) of a row-major matrix (row length ld, rows × cols valid, cols a
// multiple of 8) to shared memory, or zeros when they are outside it.
__device__ inline void copy_chunk(uint32_t shared_address, const __nv_bfloat16* base, int ld, int row, int rows,
                                  int column, int cols) {
  const bool inside = row < rows && column < cols;
  cp_async_16_or_zeros(shared_address, inside ? base + int64_t{row} * ld + column : base, inside);
}

}  // namespace

// Calls launch.template operator()<kWeightGrad, kBRowsK, Out>() for the kernel instance a table needs:
// weight gradients (b read [k, n], float c), or products with b stored [k, n] (b_rows_k) or [n, k] and
// a float or (bf16_c) __nv_bfloat16 c.
template <class Launch>
void launch_instance(bool weight_grad, bool b_rows_k, bool bf16_c, Launch&& launch) {
  if (weight_grad) return launch.template operator()<true, true, float>();
  if (bf16_c) {
    if (b_rows_k) return launch.template operator()<false, true, __nv_bfloat16>();
    return launch.template operator()<false, false, __nv_bfloat16>();
  }
  if (b_rows_k) return launch.template operator()<false, true, float>();
  launch.template operator()<false, false, float>();
}

// The launch of the Hopper kernel (grouped_wgmma.cu), for a table filled like grouped_mma.cu's.
void launch_grouped_wgmma(const GroupedMmaParams& p, bool weight_grad, bool b_rows_k, bool bf16_c);

}  // namespace engram::kernels::cuda
