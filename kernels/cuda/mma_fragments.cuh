#pragma once
// Tensor-core fragments for bf16 products with float32 accumulation (mma.sync m16n8k16, ldmatrix;
// sm_80 or newer), shared by the tensor-core attention (attention_tensor_core.cuh) and the grouped
// expert products (grouped_mma.cu). Included by kernels/cuda/*.cu only.
#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.cuh"

namespace engram::kernels::cuda {

namespace {

// Inside a warp, lane 4·g + c holds rows g and g + 8 and columns 2c, 2c + 1 of each 16 × 8
// accumulator tile (PTX ISA, "Matrix fragments for mma.m16n8k16").
__device__ inline int fragment_row() { return lane_id() / 4; }
__device__ inline int fragment_col() { return 2 * (lane_id() % 4); }

// A [kRows, kDim] bf16 tile in shared memory, rows padded to kDim + 8 elements.
template <int kRows, int kDim>
struct Bf16Tile {
  static_assert(kDim % 16 == 0);
  static constexpr int kStride = kDim + 8;  // 16-byte rows for ldmatrix, 4 banks apart
  static constexpr size_t kBytes = sizeof(__nv_bfloat16) * kRows * kStride;
  __nv_bfloat16* data;
  __device__ uint32_t address(int r, int c) const {
    return static_cast<uint32_t>(__cvta_generic_to_shared(data + r * kStride + c));
  }
  __device__ __nv_bfloat16* end() const { return data + kRows * kStride; }
};

// ---- Fragments (PTX ISA: ldmatrix, mma.m16n8k16 with .bf16) ---------------------------------------

// Four 8×8 bf16 matrices, one per register; lanes 8i … 8i+7 give the row addresses of matrix i. Lane
// 4·g + c receives elements (g, 2c), (g, 2c+1) of each, or with .trans (2c, g), (2c+1, g).
// "memory": the tiles are rewritten between loops, so the loads stay between the __syncthreads.
__device__ inline void load_matrices(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}
__device__ inline void load_matrices_transposed(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// The A fragment (16 × 16, row-major) of rows r0 … r0+15, columns c0 … c0+15 of a tile: registers
// hold (rows, columns) (0–7, 0–7), (8–15, 0–7), (0–7, 8–15), (8–15, 8–15).
template <class Tile>
__device__ void load_a(uint32_t (&a)[4], Tile tile, int r0, int c0) {
  const int lane = lane_id();
  load_matrices(a, tile.address(r0 + lane % 16, c0 + lane / 16 * 8));
}

// B fragments (16 × 8, k × n) of two n-tiles of B = tileᵀ: B(k, n) = tile(n0 + n, k0 + k) for
// n < 16, as registers {b[0], b[1]} (n-tile n0) and {b[2], b[3]} (n-tile n0 + 8), each holding k 0–7
// then 8–15. For products with the other operand's rows (Q·Kᵀ, dO·Vᵀ, K·Qᵀ, V·dOᵀ).
template <class Tile>
__device__ void load_b_of_transpose(uint32_t (&b)[4], Tile tile, int n0, int k0) {
  const int lane = lane_id();
  load_matrices(b, tile.address(n0 + lane % 8 + lane / 16 * 8, k0 + lane / 8 % 2 * 8));
}

// B fragments of two n-tiles of B = tile itself: B(k, n) = tile(k0 + k, n0 + n), same registers as
// load_b_of_transpose. For products with the tile's columns (P·V, Pᵀ·dO, dS·K, dSᵀ·Q).
template <class Tile>
__device__ void load_b(uint32_t (&b)[4], Tile tile, int k0, int n0) {
  const int lane = lane_id();
  load_matrices_transposed(b, tile.address(k0 + lane % 8 + lane / 8 % 2 * 8, n0 + lane / 16 * 8));
}

// c += a·b on one 16 × 8 tile: bf16 operands, float32 accumulation.
__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c[n0/8] and c[n0/8 + 1] += a·b on the two n-tiles of B fragments from load_b or load_b_of_transpose.
template <int kTiles>
__device__ void mma_two_tiles(float (&c)[kTiles][4], int n0, const uint32_t (&a)[4], const uint32_t (&b)[4]) {
  mma(c[n0 / 8], a, b[0], b[1]);
  mma(c[n0 / 8 + 1], a, b[2], b[3]);
}

// Two floats as a bf16 pair (nearest even), the first in the low half as fragments order them.
__device__ inline uint32_t bf16_pair(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// The A fragment of rows m0 … m0+15, columns k0 … k0+15 of A = tileᵀ: A(m, k) = tile(k0 + k, m0 + m),
// for a tile stored k-major (the transposed operand of a weight gradient, dCᵀ·X). Same registers
// as load_a.
template <class Tile>
__device__ void load_a_of_transpose(uint32_t (&a)[4], Tile tile, int m0, int k0) {
  const int lane = lane_id();
  load_matrices_transposed(a, tile.address(k0 + lane % 8 + lane / 16 * 8, m0 + lane / 8 % 2 * 8));
}

}  // namespace

}  // namespace engram::kernels::cuda
