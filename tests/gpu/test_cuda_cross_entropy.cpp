// CUDA softmax cross-entropy against the CPU one: losses and dlogits (also written in place over
// the logits, and as bf16), and the CPU's error for a target outside the vocabulary. Both sum the exponentials in
// double; the GPU's expf may differ by an ulp: losses rtol 1e-6, dlogits rtol 1e-5 with atol 1e-9
// (the gradient of a 3001-way softmax is small).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "kernels/cross_entropy.h"
#include "tests/gpu/cuda_test_util.h"

namespace engram {
namespace {

using namespace testing_util;

using CudaCrossEntropy = CudaTest;

// Vocabularies of 3001: streamed a logit at a time; 3000, 12288 and 32000: four at a time, held in
// registers (4, 8 and 16 accesses a thread); 32772: four at a time, streamed.
TEST_F(CudaCrossEntropy, LossesAndGradientsMatchTheCpu) {
  std::mt19937 gen(51);
  for (const int64_t vocab : {3001, 3000, 12288, 32000, 32772}) {
    SCOPED_TRACE("vocab " + std::to_string(vocab));
    const int64_t rows = 37;
    const HostDevice logits = random_on_both({rows, vocab}, gen, -6.0f, 6.0f);
    const HostDevice targets = on_both(random_ids<int32_t>({rows}, vocab, gen));
    HostDevice losses = nan_on_both({rows});
    kernels::cross_entropy_forward(logits.cpu, targets.cpu, losses.cpu);
    kernels::cross_entropy_forward(logits.gpu, targets.gpu, losses.gpu);
    expect_close_to_cpu(losses.gpu, losses.cpu, 1e-6, 1e-6, "forward losses");

    HostDevice fb_losses = nan_on_both({rows}), dlogits = nan_on_both({rows, vocab});
    kernels::cross_entropy_forward_backward(logits.cpu, targets.cpu, 0.25f, fb_losses.cpu, dlogits.cpu);
    kernels::cross_entropy_forward_backward(logits.gpu, targets.gpu, 0.25f, fb_losses.gpu, dlogits.gpu);
    expect_close_to_cpu(fb_losses.gpu, fb_losses.cpu, 1e-6, 1e-6, "losses");
    expect_close_to_cpu(dlogits.gpu, dlogits.cpu, 1e-5, 1e-9, "dlogits");

    // dlogits written over the logits themselves.
    Tensor in_place = logits.gpu.clone();
    HostDevice in_place_losses = nan_on_both({rows});
    kernels::cross_entropy_forward_backward(in_place, targets.gpu, 0.25f, in_place_losses.gpu, in_place);
    expect_close_to_cpu(in_place_losses.gpu, fb_losses.cpu, 1e-6, 1e-6, "in-place losses");
    expect_close_to_cpu(in_place, dlogits.cpu, 1e-5, 1e-9, "in-place dlogits");

    // bf16 dlogits (what the head's products take): the f32 ones rounded to nearest even, bit for bit.
    Tensor bf16_dlogits = Tensor::empty({rows, vocab}, DType::BF16, Device::CUDA);
    HostDevice bf16_losses = nan_on_both({rows});
    kernels::cross_entropy_forward_backward(logits.gpu, targets.gpu, 0.25f, bf16_losses.gpu, bf16_dlogits);
    EXPECT_TRUE(device_bitwise_equal(bf16_losses.gpu, fb_losses.gpu)) << "losses with bf16 dlogits";
    EXPECT_TRUE(bitwise_equal(bf16_dlogits.copy_to(Device::CPU), round_to_bf16(dlogits.gpu.copy_to(Device::CPU)).bf16))
        << "bf16 dlogits";
  }
}

TEST_F(CudaCrossEntropy, ATargetOutsideTheVocabularyIsTheCpuError) {
  const Tensor logits = Tensor::zeros({3, 5}, DType::F32, Device::CUDA);
  const Tensor targets = Tensor::from_vector<int32_t>({1, 4, 5}, {3}).copy_to(Device::CUDA);
  Tensor losses = Tensor::empty({3}, DType::F32, Device::CUDA);
  expect_error([&] { kernels::cross_entropy_forward(logits, targets, losses); },
               {"target 5 at row 2 is outside the vocabulary [0, 5)"});
}

}  // namespace
}  // namespace engram
