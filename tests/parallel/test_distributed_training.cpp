// The whole model trained data parallel × expert parallel with row-sharded Engram tables, against the
// plain single-process Model + Trainer run IN THIS TEST on every rank over the same global batch:
// - 3 optimizer steps of a fixed global batch of 8 sequences (4 micro-batches of 2; rank r runs its
//   contiguous slice of them) on the world of this run (1, 2 or 4 ranks), for every expert-parallel
//   size dividing it, with the MoE auxiliary and z-losses off and on: every step's loss, aux / z-loss,
//   gradient norm, expert loads and token count match the reference (relative error <= 1e-5; loads
//   exactly), and at the end every parameter shard held by every rank (expert blocks, table row ranges,
//   replicated tensors, balancing biases) matches the same rows of the reference parameter;
// - the shards cover every expert and every table row exactly once (table memory per rank = its rows);
// - communication metrics: nothing sent on one rank, tokens and table rows sent otherwise, dedup >= 1;
// - ranks with different micro-batch counts are an error on every rank (nothing hangs).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "model/model.h"
#include "parallel/process_groups.h"
#include "tests/parallel/support/mpi_test_env.h"
#include "train/trainer.h"

namespace engram {
namespace {

using testing_util::world;

constexpr int kVocab = 37, kSeq = 7, kSteps = 3;
constexpr int kMicroBatches = 4, kRowsPerMicroBatch = 2;  // global batch: 8 sequences
constexpr int kExperts = 8;
constexpr double kTolerance = 1e-5;

ModelConfig tiny_config(bool aux_terms) {
  ModelConfig cfg;
  cfg.set_vocab_size(kVocab);
  cfg.set_d_model(16);
  cfg.set_n_heads(2);
  cfg.set_n_layers(3);
  cfg.set_n_dense_layers(1);
  cfg.set_d_ff(24);
  cfg.set_seed(4321);
  auto* moe = cfg.mutable_moe();
  moe->set_n_routed_experts(kExperts);
  moe->set_top_k(3);
  moe->set_expert_d_ff(12);
  moe->set_n_shared_experts(1);
  moe->set_bias_update_rate(0.01f);
  moe->set_aux_loss_coeff(aux_terms ? 0.01f : 0.0f);
  moe->set_z_loss_coeff(aux_terms ? 0.01f : 0.0f);
  auto* engram = cfg.mutable_engram();
  engram->add_layers(0);
  engram->add_layers(2);
  engram->set_max_ngram(3);
  engram->set_heads_per_ngram(2);
  engram->set_head_dim(4);
  engram->add_table_size(29);
  engram->add_table_size(41);
  return cfg;
}

config::OptimConfig optim_config() {
  config::OptimConfig o;
  o.set_lr(1e-2f);
  o.set_min_lr(1e-3f);
  o.set_warmup_steps(1);
  return o;
}

// Micro-batches of the global batch of every step; identical on every rank (fixed seed).
std::vector<std::vector<Batch>> global_batches() {
  std::mt19937 rng(2024);
  std::uniform_int_distribution<int32_t> token(0, kVocab - 1);
  std::vector<std::vector<Batch>> steps(kSteps);
  for (auto& micro_batches : steps)
    for (int m = 0; m < kMicroBatches; ++m) {
      std::vector<int32_t> inputs, targets;
      for (int r = 0; r < kRowsPerMicroBatch; ++r) {
        std::vector<int32_t> row(kSeq + 1);
        for (auto& t : row) t = token(rng);
        inputs.insert(inputs.end(), row.begin(), row.end() - 1);
        targets.insert(targets.end(), row.begin() + 1, row.end());
      }
      micro_batches.push_back({Tensor::from_vector(inputs, {kRowsPerMicroBatch, kSeq}),
                               Tensor::from_vector(targets, {kRowsPerMicroBatch, kSeq})});
    }
  return steps;
}

// This rank's contiguous slice of a global batch's micro-batches.
std::vector<Batch> my_slice(const std::vector<Batch>& global, const Communicator& comm) {
  const IndexRange mine = even_range(static_cast<int64_t>(global.size()), comm.size(), comm.rank());
  return std::vector<Batch>(global.begin() + mine.begin, global.begin() + mine.end);
}

double relative_error(double actual, double expected) {
  return std::abs(actual - expected) / std::max(std::abs(expected), 1e-12);
}

// ||shard − reference rows [shard_begin, shard_begin + rows)|| / ||those reference rows||, in double.
double shard_relative_error(const Parameter& shard, const Parameter& reference) {
  const int64_t offset = shard.flat_offset(), n = shard.value.numel();
  const float* a = shard.value.data<float>();
  const float* b = reference.value.data<float>() + offset;
  double diff = 0.0, norm = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

void train_and_compare(bool aux_terms, int expert_parallel) {
  Communicator& comm = world();
  const ModelConfig cfg = tiny_config(aux_terms);
  const auto batches = global_batches();

  Model reference(cfg);
  Trainer reference_trainer(reference, optim_config(), kSteps);
  ProcessGroups groups(comm, expert_parallel, kExperts);
  Model model(cfg, {}, &groups);
  Trainer trainer(model, optim_config(), kSteps);

  for (int s = 0; s < kSteps; ++s) {
    const StepMetrics expected = reference_trainer.step(batches[s]);
    const StepMetrics m = trainer.step(my_slice(batches[s], comm));
    EXPECT_LE(relative_error(m.loss, expected.loss), kTolerance) << "step " << s << ": " << m.loss << " vs "
                                                                 << expected.loss;
    EXPECT_LE(relative_error(m.grad_norm, expected.grad_norm), kTolerance) << "step " << s;
    EXPECT_LE(relative_error(m.aux_loss, expected.aux_loss), kTolerance) << "step " << s;
    EXPECT_LE(relative_error(m.z_loss, expected.z_loss), kTolerance) << "step " << s;
    if (aux_terms) {
      EXPECT_GT(m.aux_loss, 0.0);
    }
    EXPECT_EQ(m.expert_load, expected.expert_load) << "step " << s;
    EXPECT_EQ(m.tokens, expected.tokens);
    ASSERT_EQ(m.engram_gate_mean.size(), expected.engram_gate_mean.size());
    for (size_t l = 0; l < m.engram_gate_mean.size(); ++l)
      EXPECT_LE(relative_error(m.engram_gate_mean[l], expected.engram_gate_mean[l]), kTolerance);

    // Traffic: none on one rank; tokens leave the rank only with EP > 1; table rows with W > 1.
    EXPECT_EQ(m.dispatch_bytes_sent > 0, expert_parallel > 1) << m.dispatch_bytes_sent;
    EXPECT_EQ(m.table_bytes_sent > 0, comm.size() > 1) << m.table_bytes_sent;
    EXPECT_GE(m.table_dedup_ratio(), 1.0);
    if (comm.rank() == 0 && s == 0)
      std::printf("W=%d EP=%d aux=%d: dispatcher %lld B/step, table %lld B/step, dedup %.3f (%lld / %lld)\n",
                  comm.size(), expert_parallel, aux_terms, static_cast<long long>(m.dispatch_bytes_sent),
                  static_cast<long long>(m.table_bytes_sent), m.table_dedup_ratio(),
                  static_cast<long long>(m.table_requests), static_cast<long long>(m.table_unique_rows));
  }

  // Every shard equals the same rows of the reference parameter.
  const ParallelLayout& layout = groups.layout();
  for (const Parameter* p : model.params().all()) {
    const Parameter& ref = reference.params().get(p->name);
    ASSERT_EQ(p->global_shape, ref.global_shape) << p->name;
    int64_t expected_rows = p->global_shape[0], expected_begin = 0;
    if (p->shard == ShardKind::Experts) {
      expected_begin = layout.local_experts().begin;
      expected_rows = layout.local_experts().size();
    } else if (p->shard == ShardKind::Rows) {
      expected_begin = layout.table_rows(p->global_shape[0]).begin;
      expected_rows = layout.table_rows(p->global_shape[0]).size();
    }
    EXPECT_EQ(p->shard_begin, expected_begin) << p->name;
    ASSERT_EQ(p->value.dim(0), expected_rows) << p->name;
    EXPECT_LE(shard_relative_error(*p, ref), kTolerance) << p->name << " on rank " << comm.rank();
    // The shards cover every row once: expert blocks over an EP group, table rows over the world.
    if (p->shard == ShardKind::Rows) {
      EXPECT_EQ(comm.all_reduce_sum<int64_t>(p->value.dim(0)), p->global_shape[0]) << p->name;
    }
    if (p->shard == ShardKind::Experts) {
      EXPECT_EQ(groups.expert_parallel().all_reduce_sum<int64_t>(p->value.dim(0)), p->global_shape[0]);
    }
  }
}

std::vector<int> expert_parallel_sizes() {
  std::vector<int> sizes;
  for (int ep : {1, 2, 4})
    if (world().size() % ep == 0) sizes.push_back(ep);
  return sizes;
}

TEST(DistributedTraining, MatchesSingleProcessWithoutAuxTerms) {
  for (int ep : expert_parallel_sizes()) {
    SCOPED_TRACE("expert_parallel " + std::to_string(ep));
    train_and_compare(false, ep);
  }
}

TEST(DistributedTraining, MatchesSingleProcessWithAuxAndZLoss) {
  for (int ep : expert_parallel_sizes()) {
    SCOPED_TRACE("expert_parallel " + std::to_string(ep));
    train_and_compare(true, ep);
  }
}

TEST(DistributedTraining, UnequalMicroBatchCountsAreAnErrorOnEveryRank) {
  Communicator& comm = world();
  if (comm.size() == 1) GTEST_SKIP() << "needs several ranks";
  ProcessGroups groups(comm, 1, kExperts);
  Model model(tiny_config(false), {}, &groups);
  Trainer trainer(model, optim_config(), kSteps);
  const auto batches = global_batches();
  std::vector<Batch> mine{batches[0][0]};
  if (comm.rank() == 0) mine.push_back(batches[0][1]);
  EXPECT_THROW(trainer.step(mine), Error);
}

}  // namespace
}  // namespace engram
