// The whole model trained data parallel × expert parallel with row-sharded Engram tables, against the
// plain single-process Model + Trainer run IN THIS TEST on every rank over the same global batch:
// - 3 optimizer steps of a fixed global batch of 8 sequences (4 micro-batches of 2; rank r runs its
//   contiguous slice of them) on the world of this run (1, 2 or 4 ranks), for every expert-parallel
//   size dividing it, with the MoE auxiliary and z-losses off and on: every step's loss, aux / z-loss,
//   gradient norm, expert loads and token count match the reference (relative error <= 1e-5; loads
//   exactly), and at the end every parameter shard held by every rank (expert blocks, table row ranges,
//   replicated tensors, balancing biases) matches the same rows of the reference parameter (norm-wise
//   relative error <= 3e-5);
// - the shards cover every expert and every table row exactly once (table memory per rank = its rows);
// - communication metrics: nothing sent on one rank, tokens and table rows sent otherwise, dedup >= 1;
// - ranks with different micro-batch counts are an error on every rank (nothing hangs);
// - gradient buckets (train/gradient_buckets.h), for bucket sizes from one parameter per bucket to one
//   bucket per group: every summed gradient sits in exactly one bucket of the right group, keeps its
//   values and is 256-byte aligned; a report starts exactly the buckets it makes final; finish() leaves
//   every gradient the exact sum over its group (small integers); and training with any bucket size
//   gives the same steps (bitwise on two ranks, whose sums cannot change order; within 1e-6 on four).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "model/model.h"
#include "parallel/process_groups.h"
#include "tests/parallel/support/mpi_test_env.h"
#include "tests/test_util.h"
#include "train/gradient_buckets.h"
#include "train/trainer.h"

namespace engram {
namespace {

using testing_util::world;

constexpr int kVocab = 37, kSeq = 7, kSteps = 3;
constexpr int kMicroBatches = 4, kRowsPerMicroBatch = 2;  // global batch: 8 sequences
constexpr int kExperts = 8;
constexpr double kTolerance = 1e-5;
// The parameters after the steps: an Adam step is a ratio of gradient moments, so gradient components
// near zero carry summation-order noise into updates of full learning-rate size (measured ≤ 1.3e-5,
// an expert block on 4 ranks with aux and z-loss; 8.5e-6 there before a change of summation order in
// the attention's backward).
constexpr double kParameterTolerance = 3e-5;

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
    EXPECT_LE(shard_relative_error(*p, ref), kParameterTolerance) << p->name << " on rank " << comm.rank();
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

// A small integer per (rank, parameter, element): sums over any ranks are exact in float.
float grad_value(int rank, size_t param, int64_t i) {
  return static_cast<float>((rank + 1) * 3 + static_cast<int64_t>(param % 7) - (i % 5));
}

TEST(GradientBuckets, HoldEverySummedGradientOnceAndSumIt) {
  Communicator& comm = world();
  for (int ep : expert_parallel_sizes()) {
    for (int64_t bucket_bytes : {int64_t{0}, int64_t{1024}, int64_t{1} << 30}) {
      SCOPED_TRACE("expert_parallel " + std::to_string(ep) + ", buckets of " + std::to_string(bucket_bytes));
      ProcessGroups groups(comm, ep, kExperts);
      Model model(tiny_config(false), {}, &groups);
      const std::vector<Parameter*>& params = model.params().all();
      for (size_t i = 0; i < params.size(); ++i)
        if (params[i]->grad.defined())
          for (int64_t e = 0; e < params[i]->grad.numel(); ++e)
            params[i]->grad.data<float>()[e] = grad_value(comm.rank(), i, e);

      GradientBuckets buckets(model.params(), groups, bucket_bytes);
      const std::vector<GradientBuckets::BucketInfo> info = buckets.buckets();
      std::vector<int> seen(params.size(), 0);
      std::vector<const Communicator*> group_of(params.size(), nullptr);
      size_t previous_first = SIZE_MAX;
      for (const GradientBuckets::BucketInfo& b : info) {
        ASSERT_FALSE(b.params.empty());
        EXPECT_FALSE(b.started);
        for (size_t k = 1; k < b.params.size(); ++k) EXPECT_LT(b.params[k], b.params[k - 1]);
        EXPECT_LT(b.params.back(), previous_first) << "buckets start in the order backward finishes them";
        previous_first = b.params.back();
        // Full buckets close at the size; one parameter per bucket when the size is 0.
        if (bucket_bytes == 0) {
          EXPECT_EQ(b.params.size(), 1u);
        }
        int64_t bytes_before_last = 0;  // each view padded to 256 bytes
        for (size_t k = 0; k + 1 < b.params.size(); ++k)
          bytes_before_last += (static_cast<int64_t>(params[b.params[k]]->grad.nbytes()) + 255) / 256 * 256;
        if (b.params.size() > 1) {
          EXPECT_LT(bytes_before_last, bucket_bytes) << "a bucket went on after reaching its size";
        }
        for (size_t i : b.params) {
          ++seen[i];
          group_of[i] = b.group;
        }
      }
      // The parameter a group's buffer starts with: its last registered summed one.
      const auto summed_first = [&](const Communicator* group) {
        size_t first = 0;
        for (size_t i = 0; i < params.size(); ++i)
          if (group_of[i] == group) first = i;
        return first;
      };
      for (size_t i = 0; i < params.size(); ++i) {
        const Parameter& p = *params[i];
        const bool summed = p.grad.defined() &&
                            (p.shard == ShardKind::Replicated ? comm.size() > 1
                                                              : groups.expert_data_parallel().size() > 1);
        EXPECT_EQ(seen[i], summed ? 1 : 0) << p.name;
        if (!summed) continue;
        EXPECT_EQ(group_of[i], p.shard == ShardKind::Replicated ? &groups.world() : &groups.expert_data_parallel())
            << p.name;
        // 256-byte offsets from the group's first gradient (the start of its flat buffer).
        const Parameter& first_of_group = *params[summed_first(group_of[i])];
        EXPECT_EQ((static_cast<const char*>(p.grad.raw()) - static_cast<const char*>(first_of_group.grad.raw())) % 256, 0)
            << p.name;
        for (int64_t e = 0; e < p.grad.numel(); ++e)
          ASSERT_EQ(p.grad.data<float>()[e], grad_value(comm.rank(), i, e)) << p.name << " lost its values";
      }

      // A report starts exactly the buckets made of parameters at or after it.
      if (!info.empty()) {
        const size_t middle = info[info.size() / 2].params.back();
        buckets.gradients_final_from(middle);
        for (const GradientBuckets::BucketInfo& b : buckets.buckets())
          EXPECT_EQ(b.started, b.params.back() >= middle);
      }
      buckets.finish();
      for (const GradientBuckets::BucketInfo& b : buckets.buckets()) EXPECT_FALSE(b.started);
      // The world ranks of this rank's groups, to add their values.
      const std::vector<int32_t> world_members = comm.all_gather(std::vector<int32_t>{comm.rank()});
      const std::vector<int32_t> edp_members =
          groups.expert_data_parallel().all_gather(std::vector<int32_t>{comm.rank()});
      for (size_t i = 0; i < params.size(); ++i) {
        if (seen[i] == 0) continue;
        const std::vector<int32_t>& members = group_of[i] == &groups.world() ? world_members : edp_members;
        for (int64_t e = 0; e < params[i]->grad.numel(); ++e) {
          float sum = 0.0f;
          for (int32_t r : members) sum += grad_value(r, i, e);
          ASSERT_EQ(params[i]->grad.data<float>()[e], sum) << params[i]->name << " element " << e;
        }
      }
    }
  }
}

TEST(GradientBuckets, BucketSizeChangesNoTrainingStep) {
  Communicator& comm = world();
  const auto batches = global_batches();
  const double tolerance = comm.size() <= 2 ? 0.0 : 1e-6;
  for (int ep : expert_parallel_sizes()) {
    SCOPED_TRACE("expert_parallel " + std::to_string(ep));
    std::vector<std::vector<double>> losses;
    std::vector<std::vector<Tensor>> values;
    for (int64_t bucket_bytes : {int64_t{0}, int64_t{1024}, grad_bucket_bytes(config::ParallelConfig())}) {
      ProcessGroups groups(comm, ep, kExperts);
      Model model(tiny_config(true), {}, &groups);
      Trainer trainer(model, optim_config(), kSteps, bucket_bytes);
      losses.emplace_back();
      for (int s = 0; s < kSteps; ++s) {
        const StepMetrics m = trainer.step(my_slice(batches[s], comm));
        losses.back().push_back(m.loss);
        losses.back().push_back(m.grad_norm);
      }
      values.emplace_back();
      for (const Parameter* p : model.params().all()) values.back().push_back(p->value.clone());
    }
    for (size_t run = 1; run < losses.size(); ++run) {
      for (size_t k = 0; k < losses[0].size(); ++k)
        EXPECT_LE(relative_error(losses[run][k], losses[0][k]), tolerance) << "run " << run << ", value " << k;
      for (size_t i = 0; i < values[0].size(); ++i) {
        if (tolerance == 0.0) {
          EXPECT_TRUE(testing_util::bitwise_equal(values[run][i], values[0][i])) << "run " << run << ", parameter " << i;
        } else {
          testing_util::expect_close(values[run][i], testing_util::to_double(values[0][i]), tolerance, 1e-7,
                                     "parameter " + std::to_string(i));
        }
      }
    }
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
