// CUDA RoPE against the CPU one: forward and inverse rotation, in place and into another tensor, with
// tables longer than the sequence (rows 0..T−1 used), one pair a thread (odd pairs per head) and four. The GPU
// rounds each product as the CPU does (no fused multiply-adds); rtol 1e-6, atol 1e-6 leave room for a CPU build
// that contracts them. The rotation into a bf16 tensor holds the GPU's f32 rotation rounded to nearest even, bit for
// bit.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "kernels/rope.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaRope = CudaTest;

TEST_F(CudaRope, ForwardAndInverseMatchTheCpu) {
  std::mt19937 gen(41);
  // head_dim 34: 17 pairs a head, one pair a thread; 64: four pairs a thread; also out of place.
  for (int64_t head_dim : {34, 64}) {
    const kernels::RopeTables tables = kernels::make_rope_tables(/*seq_len=*/29, head_dim, 10000.0);
    const HostDevice cos = on_both(tables.cos), sin = on_both(tables.sin);
    for (bool inverse : {false, true}) {
      const std::string what =
          std::string(inverse ? "inverse rotation" : "rotation") + ", head_dim " + std::to_string(head_dim);
      HostDevice x = random_on_both({3, 23, 5, head_dim}, gen);
      HostDevice out = nan_on_both(x.cpu.shape());
      kernels::rope_apply_to(x.cpu, cos.cpu, sin.cpu, inverse, out.cpu);
      kernels::rope_apply_to(x.gpu, cos.gpu, sin.gpu, inverse, out.gpu);
      expect_close_to_cpu(out.gpu, out.cpu, 1e-6, 1e-6, what + ", out of place");
      kernels::rope_apply_to(x.cpu, cos.cpu, sin.cpu, inverse, x.cpu);
      kernels::rope_apply_to(x.gpu, cos.gpu, sin.gpu, inverse, x.gpu);
      expect_close_to_cpu(x.gpu, x.cpu, 1e-6, 1e-6, what + ", in place");
    }
  }
}

// Into columns of wider rows (the attention backward's [N, 3D] of q, k and v gradients): f32 against
// the CPU, four pairs a thread at an aligned first column and one at an odd one; bf16 as the f32
// rotation rounded.
TEST_F(CudaRope, IntoColumnsMatchesTheCpu) {
  std::mt19937 gen(43);
  const kernels::RopeTables tables = kernels::make_rope_tables(/*seq_len=*/29, /*head_dim=*/64, 10000.0);
  const HostDevice cos = on_both(tables.cos), sin = on_both(tables.sin);
  const HostDevice x = random_on_both({3, 23, 2, 64}, gen);
  for (int64_t first_column : {128, 3}) {
    for (bool inverse : {false, true}) {
      const std::string what = "from column " + std::to_string(first_column) + (inverse ? ", inverse" : "");
      HostDevice wide = random_on_both({69, 3 * 128}, gen);
      kernels::rope_apply_into_columns(x.cpu, cos.cpu, sin.cpu, inverse, wide.cpu, first_column);
      kernels::rope_apply_into_columns(x.gpu, cos.gpu, sin.gpu, inverse, wide.gpu, first_column);
      expect_close_to_cpu(wide.gpu, wide.cpu, 1e-6, 1e-6, what);
      Tensor wide_bf16 = Tensor::empty({69, 3 * 128}, DType::BF16, Device::CUDA);
      kernels::rope_apply_into_columns(x.gpu, cos.gpu, sin.gpu, inverse, wide_bf16, first_column);
      const Tensor rotated = wide.gpu.copy_to(Device::CPU), rounded = wide_bf16.copy_to(Device::CPU);
      for (int64_t r = 0; r < 69; ++r)
        for (int64_t c = first_column; c < first_column + 128; ++c)
          ASSERT_EQ(static_cast<const uint16_t*>(rounded.raw())[r * 384 + c],
                    to_bf16(rotated.data<float>()[r * 384 + c]))
              << what << ", bf16 at row " << r << ", column " << c;
    }
  }
}

TEST_F(CudaRope, RotationIntoBf16IsTheF32RotationRounded) {
  std::mt19937 gen(42);
  const kernels::RopeTables tables = kernels::make_rope_tables(/*seq_len=*/40, /*head_dim=*/64, 10000.0);
  const HostDevice cos = on_both(tables.cos), sin = on_both(tables.sin);
  for (bool inverse : {false, true}) {
    const Tensor x = random_uniform({2, 37, 3, 64}, gen, -4.0f, 4.0f).copy_to(Device::CUDA);
    Tensor rotated = x.clone();
    kernels::rope_apply_to(rotated, cos.gpu, sin.gpu, inverse, rotated);
    Tensor rotated_bf16 = Tensor::empty(x.shape(), DType::BF16, Device::CUDA);
    kernels::rope_apply_to(x, cos.gpu, sin.gpu, inverse, rotated_bf16);
    EXPECT_TRUE(bitwise_equal(rotated_bf16.copy_to(Device::CPU), round_to_bf16(rotated.copy_to(Device::CPU)).bf16))
        << (inverse ? "inverse rotation" : "rotation");
  }
}

}  // namespace
}  // namespace engram
