// Grouped expert products on Hopper (sm_90a): the kernel of grouped_mma.h taken on compute capability
// 9.0 devices, with warpgroup tensor-core products (wgmma.mma_async) instead of mma.sync. Same group
// table and 128 × 128 output tiles as grouped_mma.cu (grouped_mma_common.cuh); what differs:
//
// - A block is one warpgroup (4 warps, 128 threads) and owns the whole tile as two 64 × 128
//   accumulators (64 float registers each per thread): per 16 of k, two wgmma m64n128k16 read both
//   operands straight from shared memory through matrix descriptors, with no ldmatrix and no
//   per-warp fragments.
// - Tiles of 64 along k (128 bytes of bf16, one row of the 128-byte swizzle) stream through kStages
//   stages filled by cp.async, kStages − 1 tiles ahead. Shared memory holds them in the layouts
//   wgmma reads (PTX ISA, "Shared memory matrix layout", 128-byte swizzle): the 16-byte chunk c of
//   a 128-byte row r goes to chunk c ^ (r mod 8), in 1024-byte aligned 8-row atoms.
//   - K-major tiles (a of products, b[g] stored [n, k]): [128 rows][64 k], 8-row atoms 1024 bytes
//     apart (the descriptor's stride offset); 16 of k further is 32 bytes on.
//   - MN-major tiles (dcᵀ of weight gradients, b[g] stored [k, n]): two [64 k][64 columns] halves
//     8 KB apart (the leading offset), 8-row groups of k 1024 bytes apart (the stride offset); 16 of
//     k further is 2048 bytes on. wgmma reads them transposed (bf16 allows either major-ness).
// - Per stage: the copies that landed are made visible to the tensor cores' (async) proxy with
//   fence.proxy.async, a barrier, then the 8 products of the stage are issued and waited for before
//   the next barrier, so a stage is refilled only after every product that reads it is done. Two
//   blocks per SM (3 stages × 32 KB each) let one block's copies and epilogue overlap the other's
//   products.
// Every output element is beta·c plus the tensor core's sum over k in a fixed order: results repeat
// bit for bit. A bf16 output (beta 0) is that float32 sum rounded to nearest even.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/grouped_mma_common.cuh"

namespace engram::kernels::cuda {

namespace {

constexpr int kTileK = 64;
constexpr int kStages = 3;
constexpr int kWgmmaThreads = 128;                                                      // one warpgroup
constexpr uint32_t kOperandTileBytes = kGroupedTileM * kTileK * sizeof(__nv_bfloat16);  // 16 KB, a or b
constexpr uint32_t kStageBytes = 2 * kOperandTileBytes;
constexpr uint32_t kAtomBytes = 1024;      // 8 rows of 128 bytes: the swizzle's repeat
constexpr uint32_t kHalfBytes = 64 * 128;  // 64 rows (K-major) or 64 columns (MN-major) of a tile
constexpr size_t kSharedBytes = kStages * kStageBytes + kAtomBytes;  // + room to align the stages
static_assert(kGroupedTileM == 128 && kGroupedTileN == 128, "two m64n128 products per 16 of k");

// Byte offsets in a tile of the 16-byte chunk `chunk` of row `row` (128-byte swizzle).
__device__ inline uint32_t k_major_offset(int row, int chunk) {  // row < 128 of m or n, chunk < 8 along k
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}
__device__ inline uint32_t mn_major_offset(int row, int chunk) {  // row < 64 of k, chunk < 16 along m or n
  return (chunk >> 3) * kHalfBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

// A tile of a row-major matrix (row length ld, rows × cols valid, zeros outside), from row row0 and
// column col0: K-major, 128 rows (m or n) × 64 columns (k); MN-major, 64 rows (k) × 128 columns (m
// or n).
template <bool kMnMajor>
__device__ inline void load_swizzled_tile(uint32_t tile, const __nv_bfloat16* base, int ld, int row0, int rows,
                                          int col0, int cols) {
  constexpr int kRows = kMnMajor ? 64 : 128, kChunkBits = kMnMajor ? 4 : 3;  // 16 or 8 chunks a row
#pragma unroll
  for (int i = static_cast<int>(threadIdx.x); i < kRows << kChunkBits; i += kWgmmaThreads) {
    const int r = i >> kChunkBits, chunk = i & ((1 << kChunkBits) - 1);
    const uint32_t offset = kMnMajor ? mn_major_offset(r, chunk) : k_major_offset(r, chunk);
    copy_chunk(tile + offset, base, ld, row0 + r, rows, col0 + chunk * 8, cols);
  }
}

// A shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address, leading and
// stride byte offsets (each in 16-byte units), 128-byte swizzle (mode 1 in bits 62–63). Base offset
// 0: every atom starts on a 1024-byte boundary.
__device__ inline uint64_t descriptor(uint32_t address, uint32_t leading_bytes, uint32_t stride_bytes) {
  return uint64_t{(address & 0x3FFFF) >> 4} | uint64_t{leading_bytes >> 4} << 16 | uint64_t{stride_bytes >> 4} << 32 |
         uint64_t{1} << 62;
}
// Operand descriptors for 16 of k from `step`·16 on, and (A) rows 64·half on.
template <bool kMnMajor>
__device__ inline uint64_t a_descriptor(uint32_t tile, int half, int step) {
  if constexpr (kMnMajor) return descriptor(tile + half * kHalfBytes + step * 2048, kHalfBytes, kAtomBytes);
  return descriptor(tile + half * kHalfBytes + step * 32, 16, kAtomBytes);  // leading offset unused
}
template <bool kMnMajor>
__device__ inline uint64_t b_descriptor(uint32_t tile, int step) {
  if constexpr (kMnMajor) return descriptor(tile + step * 2048, kHalfBytes, kAtomBytes);
  return descriptor(tile + step * 32, 16, kAtomBytes);
}

__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Shared-memory writes of this thread (the cp.async copies) become visible to wgmma's reads.
__device__ inline void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins the accumulators between asynchronous products: the compiler must not read or move them
// across this point (the products write them behind its back until wgmma_wait_all).
__device__ inline void pin(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d += A·B for a 64 × 128 × 16 piece, both operands from shared memory; kTransA/kTransB: MN-major.
template <int kTransA, int kTransB>
__device__ inline void wgmma_m64n128k16(float (&d)[64], uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred accumulate;\nsetp.ne.b32 accumulate, %68, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "
      "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, "
      "accumulate, 1, 1, %66, %67;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "n"(kTransA), "n"(kTransB), "r"(1));
#endif
}

// kWeightGrad: A = dcᵀ (MN-major); kBRowsK: b[g] stored [k, n] (MN-major), else [n, k]; Out: c's
// elements (float, or __nv_bfloat16 with beta 0).
template <bool kWeightGrad, bool kBRowsK, class Out>
__global__ void __launch_bounds__(kWgmmaThreads, 2) grouped_wgmma_kernel(const __grid_constant__ GroupedMmaParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char shared_storage[];
  const uint32_t stages =
      (static_cast<uint32_t>(__cvta_generic_to_shared(shared_storage)) + kAtomBytes - 1) & ~(kAtomBytes - 1);
  const GroupedTile<Out> t = locate_tile<kWeightGrad, Out>(p);

  // Starts the copies of k tile kt into its stage, if there is such a tile, as one commit group
  // (empty past the end, so that every thread always has the same number of groups in flight).
  const int k_tiles = k_tiles_of<kTileK>(t);
  const auto load_stage = [&](int kt) {
    if (kt < k_tiles) {
      const uint32_t a_tile = stages + kt % kStages * kStageBytes, b_tile = a_tile + kOperandTileBytes;
      const KTileSource src = k_tile_source<kTileK>(t, kt);
      if constexpr (kWeightGrad) {
        load_swizzled_tile<true>(a_tile, src.a, p.lda, src.k0, t.k, t.m0, t.m);
      } else {
        load_swizzled_tile<false>(a_tile, src.a, p.lda, t.m0, t.m, src.k0, t.k);
      }
      if constexpr (kBRowsK) {
        load_swizzled_tile<true>(b_tile, src.b, p.ldb, src.k0, t.k, t.n0, t.n);
      } else {
        load_swizzled_tile<false>(b_tile, src.b, p.ldb, t.n0, t.n, src.k0, t.k);
      }
    }
    cp_async_commit();
  };

  // Warp w of the warpgroup holds rows 16w … 16w+15 of each 64-row half; in it, lane (g, c) holds
  // rows g and g + 8, columns 8j + 2c and 8j + 2c + 1 as registers 4j + 2·half, 4j + 2·half + 1 (the
  // m16n8 accumulator layout, repeated along n). n is a multiple of 8, so a pair is inside or outside
  // together, and c is 16-byte aligned, so a pair is one 8-byte (float) or 4-byte (bf16) access.
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = lane_id();
  const auto pair_at = [&](int h, int j, int half) -> Out* {
    const int row = t.m0 + 64 * h + 16 * warp + lane / 4 + 8 * half, col = t.n0 + 8 * j + 2 * (lane % 4);
    return row < t.m && col < t.n ? t.c + int64_t{row} * p.ldc + col : nullptr;
  };
  for (int kt = 0; kt < kStages - 1; ++kt) load_stage(kt);
  // The accumulators start at beta·c (read once, before the products, straight into them; at the end
  // the reads would wait behind the writes), or at 0 without reading c (it may hold NaN; a bf16 c
  // comes with beta 0).
  float acc[2][64];
  if constexpr (std::is_same_v<Out, float>) {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const float* in = p.beta != 0.0f ? pair_at(h, j, half) : nullptr;
          const float2 old = in ? *reinterpret_cast<const float2*>(in) : make_float2(0.0f, 0.0f);
          acc[h][4 * j + 2 * half] = p.beta * old.x;
          acc[h][4 * j + 2 * half + 1] = p.beta * old.y;
        }
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 64; ++i) acc[h][i] = 0.0f;
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of tile kt have landed
    fence_proxy_async();
    __syncthreads();               // everyone's have, and every product of tile kt − 1 is done
    load_stage(kt + kStages - 1);  // into tile kt − 1's stage
    const uint32_t a_tile = stages + kt % kStages * kStageBytes, b_tile = a_tile + kOperandTileBytes;
    wgmma_fence();
    pin(acc[0]);
    pin(acc[1]);
#pragma unroll
    for (int step = 0; step < kTileK / 16; ++step) {
      const uint64_t b = b_descriptor<kBRowsK>(b_tile, step);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        wgmma_m64n128k16<kWeightGrad, kBRowsK>(acc[h], a_descriptor<kWeightGrad>(a_tile, h, step), b);
      }
    }
    wgmma_commit();
    wgmma_wait_all();
    pin(acc[0]);
    pin(acc[1]);
  }

#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        if (Out* out = pair_at(h, j, half)) store_pair(out, acc[h][4 * j + 2 * half], acc[h][4 * j + 2 * half + 1]);
#else
  __trap();  // launched only where grouped_wgmma_available(): sm_90a code on a 9.0 device
#endif
}

}  // namespace

void launch_grouped_wgmma(const GroupedMmaParams& p, bool weight_grad, bool b_rows_k, bool bf16_c) {
  launch_instance(weight_grad, b_rows_k, bf16_c, [&]<bool kWeightGrad, bool kBRowsK, class Out>() {
    launch_with_shared(grouped_wgmma_kernel<kWeightGrad, kBRowsK, Out>, dim3(p.tile_start[p.groups]), kWgmmaThreads,
                       kSharedBytes, p);
  });
  EG_CUDA_CHECK_LAUNCH("grouped_wgmma_kernel");
}

}  // namespace engram::kernels::cuda
