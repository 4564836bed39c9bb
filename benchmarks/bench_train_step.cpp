// End-to-end CPU training step throughput (forward, backward, clip, AdamW + sparse Adam) for
// configs/tiny.pbtxt-sized models on random tokens. Reports tokens/s.
//   build/benchmarks/bench_train_step
#include <benchmark/benchmark.h>

#include <random>

#include "runtime/config/config.h"
#include "train/trainer.h"

namespace engram {
namespace {

// The tiny model of configs/tiny.pbtxt, with and without Engram (the ratio shows Engram's cost).
ExperimentConfig bench_config(bool with_engram) {
  ExperimentConfig cfg = load_config(ENGRAM_SOURCE_DIR "/configs/tiny.pbtxt");
  if (!with_engram) cfg.mutable_model()->clear_engram();
  return cfg;
}

void BM_train_step(benchmark::State& state) {
  const ExperimentConfig cfg = bench_config(state.range(0) != 0);
  Model model(cfg.model());
  Trainer trainer(model, cfg.optim(), cfg.train().max_steps());
  const int64_t B = cfg.train().global_batch_size(), T = cfg.train().seq_len();
  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> token(0, cfg.model().vocab_size() - 1);
  Batch batch{Tensor::empty({B, T}, DType::I32), Tensor::empty({B, T}, DType::I32)};
  for (int64_t i = 0; i < B * T; ++i) {
    batch.inputs.data<int32_t>()[i] = token(rng);
    batch.targets.data<int32_t>()[i] = token(rng);
  }
  trainer.step({batch});  // warm-up: the first step allocates what later steps reuse
  for (auto _ : state) benchmark::DoNotOptimize(trainer.step({batch}).loss);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(state.range(0) ? "tiny" : "tiny without engram");
}
BENCHMARK(BM_train_step)->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond)->MinTime(3.0);

}  // namespace
}  // namespace engram
