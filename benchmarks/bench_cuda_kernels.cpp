// CUDA kernel micro-benchmarks at the shapes of configs/h100-bench.pbtxt (16k tokens a step, d_model
// 768, 64 experts of width 256, top-6, 12 heads of 64, sequence 2048), under bf16 matmuls: the grouped
// expert products (forward, row gradients and their pair, weight gradients, balanced groups; f32 output,
// and bf16 beside it for the products into 768 columns), the attention forward and backward (TFLOP/s
// each), a branch's output product onto the residual stream (product then add, against gemm_plus), the
// attention's q, k, v backward products (three each against one each); and
// RoPE, the cross-entropy and the RMSNorm forward and backward (GB/s of the bytes they must move). The
// figures and their commands live in docs/PERFORMANCE.md.
//   build-gpu/benchmarks/bench_cuda_kernels [--benchmark_filter=grouped]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/cuda/grouped_mma.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/matmul_precision.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "runtime/cuda/device.h"

namespace engram {
namespace {

constexpr int64_t kTokens = 16384, kModel = 768, kExperts = 64, kExpertWidth = 256, kTopK = 6;

// Whether a device is there (else the benchmark reports why it skips); every product here is bf16.
bool device_ready(benchmark::State& state) {
  if (cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return false;
  }
  kernels::set_matmul_precision(kernels::MatmulPrecision::BF16);
  return true;
}

// Values in [-1, 1) on the device from a 64-bit LCG (fast for 10⁸ values; any spread will do for
// timing): bf16 as the products take them, or f32.
Tensor random_on_device(const Shape& shape, uint64_t seed, DType dtype = DType::F32) {
  Tensor t = Tensor::empty(shape);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    p[i] = static_cast<float>(seed >> 40) * 0x1p-23f - 1.0f;
  }
  const Tensor on_device = t.copy_to(Device::CUDA);
  return dtype == DType::BF16 ? kernels::matmul_operand(on_device) : on_device;
}

// Every expert receives the same number of rows (the balanced case the bias balancing aims at).
std::vector<int64_t> balanced_offsets(int64_t rows) {
  std::vector<int64_t> offsets;
  for (int64_t g = 0; g <= kExperts; ++g) offsets.push_back(rows * g / kExperts);
  return offsets;
}

// Times `body` (queued on the device) per iteration, waiting for the device at both ends.
template <class Body>
void time_on_device(benchmark::State& state, double flops, Body&& body) {
  body();  // plans, workspaces and the allocator's cache are ready before timing
  cuda_synchronize();
  for (auto _ : state) body();
  cuda_synchronize();
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// A grouped kernel that declines the shapes would leave nothing to time.
void skip_not_taken(benchmark::State& state) { state.SkipWithError("the grouped kernel does not take these shapes"); }

// One MoE layer's expert weights w [E, out, in] with the rows they multiply: first arg 0 takes d_model
// to the expert width (w1, w3), 1 the expert width back to d_model (w2); second arg 0 runs the fastest
// grouped kernel here (wgmma on an H100), 1 the mma.sync one, side by side; `output`, the products'
// output dtype.
struct ExpertProduct {
  explicit ExpertProduct(benchmark::State& state, DType output = DType::F32)
      : in(state.range(0) ? kExpertWidth : kModel),
        out(state.range(0) ? kModel : kExpertWidth),
        kernel(state.range(1) ? kernels::cuda::GroupedMmaKernel::MmaSync : kernels::cuda::GroupedMmaKernel::Fastest),
        output(output) {
    state.SetLabel(std::string(state.range(1) || !kernels::cuda::grouped_wgmma_available() ? "mma.sync" : "wgmma") +
                   (output == DType::BF16 ? ", bf16 out" : ""));
  }
  double flops() const { return 2.0 * rows * in * out; }
  Tensor output_rows(int64_t cols) const { return Tensor::empty({rows, cols}, output, Device::CUDA); }

  int64_t rows = kTokens * kTopK, in, out;
  kernels::cuda::GroupedMmaKernel kernel;
  DType output;
  Tensor x = random_on_device({rows, in}, 1, DType::BF16);    // the products' input rows
  Tensor dy = random_on_device({rows, out}, 2, DType::BF16);  // the gradient of their output
  Tensor w = random_on_device({kExperts, out, in}, 3, DType::BF16);
  std::vector<int64_t> offsets = balanced_offsets(rows);
};

// The output dtype of a benchmark with a third arg: 0 f32, 1 bf16.
DType output_dtype(const benchmark::State& state) { return state.range(2) ? DType::BF16 : DType::F32; }

void BM_grouped_forward(benchmark::State& state) {
  if (!device_ready(state)) return;
  const ExpertProduct e(state, output_dtype(state));
  Tensor y = e.output_rows(e.out);
  if (!kernels::cuda::grouped_mma(e.x, e.w, true, y, e.offsets, 0.0f, e.kernel)) return skip_not_taken(state);
  time_on_device(state, e.flops(), [&] { kernels::cuda::grouped_mma(e.x, e.w, true, y, e.offsets, 0.0f, e.kernel); });
}
// bf16 output for 256 → 768 only: the products into 768 columns are the ones the f32 writes bound.
BENCHMARK(BM_grouped_forward)
    ->ArgsProduct({{0}, {0, 1}, {0}})
    ->ArgsProduct({{1}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_grouped_row_gradient(benchmark::State& state) {
  if (!device_ready(state)) return;
  const ExpertProduct e(state);
  Tensor dx = Tensor::empty({e.rows, e.in}, DType::F32, Device::CUDA);
  if (!kernels::cuda::grouped_mma(e.dy, e.w, false, dx, e.offsets, 0.0f, e.kernel)) return skip_not_taken(state);
  time_on_device(state, e.flops(),
                 [&] { kernels::cuda::grouped_mma(e.dy, e.w, false, dx, e.offsets, 0.0f, e.kernel); });
}
BENCHMARK(BM_grouped_row_gradient)->ArgsProduct({{0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();

// The row gradients through w1 and w3 summed in one pass into 768 columns (grouped_mma_pair, first arg
// 0 only): dx = dy · w + dy3 · w3.
void BM_grouped_row_gradient_pair(benchmark::State& state) {
  if (!device_ready(state)) return;
  const ExpertProduct e(state, output_dtype(state));
  const Tensor dy3 = random_on_device(e.dy.shape(), 4, DType::BF16), w3 = random_on_device(e.w.shape(), 5, DType::BF16);
  Tensor dx = e.output_rows(e.in);
  const auto pair = [&] { return kernels::cuda::grouped_mma_pair(e.dy, e.w, dy3, w3, false, dx, e.offsets, e.kernel); };
  if (!pair()) return skip_not_taken(state);
  time_on_device(state, 2 * e.flops(), pair);
}
BENCHMARK(BM_grouped_row_gradient_pair)
    ->ArgsProduct({{0}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_grouped_weight_gradient(benchmark::State& state) {
  if (!device_ready(state)) return;
  const ExpertProduct e(state);
  Tensor dw = Tensor::zeros({kExperts, e.out, e.in}, DType::F32, Device::CUDA);
  if (!kernels::cuda::grouped_mma_wgrad(e.dy, e.x, dw, e.offsets, e.kernel)) return skip_not_taken(state);
  time_on_device(state, e.flops(), [&] { kernels::cuda::grouped_mma_wgrad(e.dy, e.x, dw, e.offsets, e.kernel); });
}
BENCHMARK(BM_grouped_weight_gradient)->ArgsProduct({{0, 1}, {0, 1}})->Unit(benchmark::kMillisecond)->UseRealTime();

// One layer's causal attention, batch 8 × 2048 tokens, 12 heads of 64: 4·B·H·T²·d_h / 2 FLOPs
// forward, 2.5 times that backward (five products, one of them the recomputed scores).
constexpr int64_t kBatch = 8, kSeq = 2048, kHeads = 12, kHeadDim = 64;
constexpr double kAttentionForwardFlops = 2.0 * kBatch * kHeads * kSeq * kSeq * kHeadDim;

// q, k, v, dout in bf16, as the model gives them to the tensor-core kernels.
struct AttentionTensors {
  Tensor q = random_on_device({kBatch, kSeq, kHeads, kHeadDim}, 7, DType::BF16);
  Tensor k = random_on_device(q.shape(), 8, DType::BF16), v = random_on_device(q.shape(), 9, DType::BF16);
  Tensor dout = random_on_device(q.shape(), 10, DType::BF16);
  Tensor out = Tensor::empty(q.shape(), DType::F32, Device::CUDA);
  Tensor lse = Tensor::empty({kBatch, kHeads, kSeq}, DType::F32, Device::CUDA);
  Tensor dq = Tensor::empty(q.shape(), DType::F32, Device::CUDA), dk = dq.clone(), dv = dq.clone();
};

void BM_attention_forward(benchmark::State& state) {
  if (!device_ready(state)) return;
  AttentionTensors t;
  time_on_device(state, kAttentionForwardFlops, [&] { kernels::attention_forward(t.q, t.k, t.v, t.out, t.lse); });
}
BENCHMARK(BM_attention_forward)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_attention_backward(benchmark::State& state) {
  if (!device_ready(state)) return;
  AttentionTensors t;
  kernels::attention_forward(t.q, t.k, t.v, t.out, t.lse);
  time_on_device(state, 2.5 * kAttentionForwardFlops,
                 [&] { kernels::attention_backward(t.dout, t.q, t.k, t.v, t.out, t.lse, t.dq, t.dk, t.dv); });
}
BENCHMARK(BM_attention_backward)->Unit(benchmark::kMillisecond)->UseRealTime();

// A branch's output product joining the residual stream (W_o: o [tokens, d_model] bf16 against the
// f32 residual): arg 0 the product into its own f32 tensor, then an out-of-place add (what the blocks
// did before gemm_plus); arg 1 gemm_plus, cuBLASLt reading the residual as C and writing the sum as D.
void BM_output_product_onto_residual(benchmark::State& state) {
  if (!device_ready(state)) return;
  const bool plus = state.range(0) == 1;
  state.SetLabel(plus ? "gemm_plus" : "gemm, add");
  const Tensor o = random_on_device({kTokens, kModel}, 15, DType::BF16);
  const Tensor w = random_on_device({kModel, kModel}, 16, DType::BF16);
  const Tensor residual = random_on_device({kTokens, kModel}, 17);
  Tensor y = Tensor::empty({kTokens, kModel}, DType::F32, Device::CUDA);
  Tensor sum = Tensor::empty({kTokens, kModel}, DType::F32, Device::CUDA);
  time_on_device(state, 2.0 * kTokens * kModel * kModel, [&] {
    if (plus) {
      kernels::gemm_plus(o, false, w, true, residual, sum);
    } else {
      kernels::gemm(o, false, w, true, y);
      kernels::add(residual, y, sum);
    }
  });
}
BENCHMARK(BM_output_product_onto_residual)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

// The attention's q, k, v products in backward (the input gradient and the three weight gradients):
// arg 0 three products each, the input gradient summed over three products (two read it back); arg 1
// one product each over the [N, 3D] gradients side by side (what the model runs), plus what that costs
// besides: dv's copy into its columns and the three adds of the stacked weight gradient into the
// parameters' gradients.
void BM_qkv_backward_products(benchmark::State& state) {
  if (!device_ready(state)) return;
  const bool stacked = state.range(0) == 1;
  state.SetLabel(stacked ? "one product each" : "three products each");
  const int64_t d = kModel;
  Tensor d_qkv = random_on_device({kTokens, 3 * d}, 20, DType::BF16);
  const Tensor w_qkv = random_on_device({3 * d, d}, 21, DType::BF16);
  const Tensor x = random_on_device({kTokens, d}, 22, DType::BF16);
  // The three gradients and weights as separate tensors (arg 0 reads these).
  std::vector<Tensor> grads, weights;
  for (int i = 0; i < 3; ++i) {
    grads.push_back(random_on_device({kTokens, d}, 23 + i, DType::BF16));
    weights.push_back(w_qkv.slice(i * d, (i + 1) * d));
  }
  Tensor dx = Tensor::empty({kTokens, d}, DType::F32, Device::CUDA);
  Tensor dw = Tensor::empty({3 * d, d}, DType::F32, Device::CUDA);
  std::vector<Tensor> w_grads;
  for (int i = 0; i < 3; ++i) w_grads.push_back(Tensor::zeros({d, d}, DType::F32, Device::CUDA));
  time_on_device(state, 4.0 * 3 * kTokens * d * d, [&] {
    if (stacked) {
      kernels::copy_into_columns(grads[2], d_qkv, 2 * d);
      kernels::gemm(d_qkv, true, x, false, dw);
      for (int i = 0; i < 3; ++i) kernels::add_(w_grads[i], dw.slice(i * d, (i + 1) * d));
      kernels::gemm(d_qkv, false, w_qkv, false, dx);
    } else {
      for (int i = 0; i < 3; ++i) kernels::gemm(grads[i], true, x, false, w_grads[i], 1.0f, 1.0f);
      for (int i = 0; i < 3; ++i) kernels::gemm(grads[i], false, weights[i], false, dx, 1.0f, i == 0 ? 0.0f : 1.0f);
    }
  });
}
BENCHMARK(BM_qkv_backward_products)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

// RoPE on one layer's q (or k) at the step's shape, rotated from the f32 product into the bf16 the
// attention reads: GB/s of the 4 + 2 bytes a value it must move (the tables stay in L2).
void BM_rope(benchmark::State& state) {
  if (!device_ready(state)) return;
  constexpr int64_t kSeq = 2048, kHeads = 12, kHeadDim = 64;
  const kernels::RopeTables host = kernels::make_rope_tables(kSeq, kHeadDim, 10000.0);
  const Tensor cos = host.cos.copy_to(Device::CUDA), sin = host.sin.copy_to(Device::CUDA);
  const Tensor x = random_on_device({kTokens / kSeq, kSeq, kHeads, kHeadDim}, 18);
  Tensor out = Tensor::empty(x.shape(), DType::BF16, Device::CUDA);
  time_on_device(state, 0.0, [&] { kernels::rope_apply_to(x, cos, sin, false, out); });
  state.counters.erase("TFLOP/s");  // a figure of bytes, not of products
  state.counters["GB/s"] = benchmark::Counter(6.0 * x.numel() * 1e-9, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(BM_rope)->Unit(benchmark::kMicrosecond)->UseRealTime();

// The head's softmax cross-entropy over one step's logits, dlogits in bf16: arg the vocabulary, 32000
// (h100-bench's: rows held in registers) and 32772 (just past what registers hold: the rows streamed
// three times), side by side. GB/s of the 4 + 2 bytes a logit it must move.
void BM_cross_entropy(benchmark::State& state) {
  if (!device_ready(state)) return;
  const int64_t vocab = state.range(0);
  state.SetLabel(vocab <= 32768 ? "held in registers" : "streamed");
  const Tensor logits = random_on_device({kTokens, vocab}, 19);
  Tensor targets = Tensor::empty({kTokens}, DType::I32);
  for (int64_t i = 0; i < kTokens; ++i) targets.data<int32_t>()[i] = static_cast<int32_t>(i * 7919 % vocab);
  targets = targets.copy_to(Device::CUDA);
  Tensor losses = Tensor::empty({kTokens}, DType::F32, Device::CUDA);
  Tensor dlogits = Tensor::empty({kTokens, vocab}, DType::BF16, Device::CUDA);
  time_on_device(state, 0.0,
                 [&] { kernels::cross_entropy_forward_backward(logits, targets, 1.0f / kTokens, losses, dlogits); });
  state.counters.erase("TFLOP/s");  // a figure of bytes, not of products
  state.counters["GB/s"] = benchmark::Counter(
      6.0 * logits.numel() * 1e-9, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_cross_entropy)->Arg(32000)->Arg(32772)->Unit(benchmark::kMicrosecond)->UseRealTime();

// RMSNorm over one step's rows of d_model: arg 0 the forward writing bf16 y (what the products take),
// 1 the backward adding the residual gradient, dg's column sums included. Prints GB/s of the bytes
// the kernels cannot avoid moving (each value read or written once; rows read again from L2 not
// counted): 4 + 2 bytes a value forward (x, y), 16 backward (dy, x, dx_residual, dx), 4 a row (rstd).
void BM_rmsnorm(benchmark::State& state) {
  if (!device_ready(state)) return;
  const bool backward = state.range(0) == 1;
  state.SetLabel(backward ? "backward, dx_residual" : "forward, bf16 y");
  const Tensor x = random_on_device({kTokens, kModel}, 11), g = random_on_device({kModel}, 12);
  const Tensor dy = random_on_device({kTokens, kModel}, 13), residual = random_on_device({kTokens, kModel}, 14);
  Tensor y = Tensor::empty({kTokens, kModel}, DType::BF16, Device::CUDA);
  Tensor rstd = Tensor::empty({kTokens}, DType::F32, Device::CUDA);
  Tensor dx = Tensor::empty({kTokens, kModel}, DType::F32, Device::CUDA);
  Tensor dg = Tensor::zeros({kModel}, DType::F32, Device::CUDA);
  kernels::rmsnorm_forward(x, g, 1e-6f, y, rstd);
  const double bytes = (backward ? 16.0 : 6.0) * kTokens * kModel + 4.0 * kTokens;
  time_on_device(state, 0.0, [&] {
    if (backward) {
      kernels::rmsnorm_backward(dy, x, g, rstd, dx, dg, residual);
    } else {
      kernels::rmsnorm_forward(x, g, 1e-6f, y, rstd);
    }
  });
  state.counters.erase("TFLOP/s");  // a figure of bytes, not of products
  state.counters["GB/s"] =
      benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_rmsnorm)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace engram
