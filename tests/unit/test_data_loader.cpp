// The training data order (train/data_loader.h), checked against naive references written here:
// - rows are the documented token windows (inputs row[0..T-1], targets row[1..T]);
// - each epoch's order is the documented Fisher–Yates shuffle and visits every row exactly once;
// - step s reads global rows [s·GB, (s+1)·GB), across epoch boundaries too;
// - batches are a pure function of the step (a fresh loader gives step s what a loader that walked
//   steps 0..s−1 gives: resuming needs no state), identical across loaders, different across seeds;
// - micro-batches and rank slices split the step's rows in order;
// - validation reads rows in file order, in batches, up to a row limit;
// - a shard too small for one row is an error naming the file, its token count and T.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "runtime/rng.h"
#include "tests/test_util.h"
#include "train/data_loader.h"

namespace engram {
namespace {

using testing_util::bitwise_equal;

TokenShard random_shard(int64_t tokens, std::mt19937& gen, const std::string& path = "test.bin") {
  std::uniform_int_distribution<int32_t> token(0, 999);
  TokenShard shard;
  shard.path = path;
  shard.tokens.resize(static_cast<size_t>(tokens));
  for (int32_t& t : shard.tokens) t = token(gen);
  return shard;
}

// The documented shuffle, written out: perm = identity, then for i = R−1..1 swap perm[i] with
// perm[splitmix64_at(key, R − i) mod (i + 1)], key = stream_key(seed, "data/epoch/<e>").
std::vector<int64_t> naive_permutation(uint64_t seed, int64_t epoch, int64_t rows) {
  std::vector<int64_t> perm;
  for (int64_t i = 0; i < rows; ++i) perm.push_back(i);
  const uint64_t key = stream_key(seed, "data/epoch/" + std::to_string(epoch));
  uint64_t counter = 0;
  for (int64_t i = rows - 1; i > 0; --i) {
    ++counter;
    const uint64_t j = splitmix64_at(key, counter) % static_cast<uint64_t>(i + 1);
    const int64_t tmp = perm[i];
    perm[i] = perm[j];
    perm[j] = tmp;
  }
  return perm;
}

// Inputs and targets of the listed rows, straight from the token vector.
Batch naive_batch(const std::vector<int32_t>& tokens, int64_t seq_len, const std::vector<int64_t>& rows) {
  std::vector<int32_t> inputs, targets;
  for (int64_t c : rows)
    for (int64_t t = 0; t < seq_len; ++t) {
      inputs.push_back(tokens[c * seq_len + t]);
      targets.push_back(tokens[c * seq_len + t + 1]);
    }
  const int64_t n = static_cast<int64_t>(rows.size());
  return {Tensor::from_vector(inputs, {n, seq_len}), Tensor::from_vector(targets, {n, seq_len})};
}

// Micro-batches of one step joined back into one batch, in order.
Batch concat(const std::vector<Batch>& parts) {
  std::vector<int32_t> inputs, targets;
  int64_t rows = 0, seq_len = parts.at(0).inputs.dim(1);
  for (const Batch& b : parts) {
    const std::vector<int32_t> in = b.inputs.to_vector<int32_t>(), tg = b.targets.to_vector<int32_t>();
    inputs.insert(inputs.end(), in.begin(), in.end());
    targets.insert(targets.end(), tg.begin(), tg.end());
    rows += b.inputs.dim(0);
  }
  return {Tensor::from_vector(inputs, {rows, seq_len}), Tensor::from_vector(targets, {rows, seq_len})};
}

bool same_batch(const Batch& a, const Batch& b) {
  return bitwise_equal(a.inputs, b.inputs) && bitwise_equal(a.targets, b.targets);
}

TEST(DataLoader, RowsAreWindowsOfTPlusOneTokens) {
  std::mt19937 gen(1);
  for (int64_t seq_len : {1, 3, 7}) {
    for (int64_t extra : {0, 1, 2}) {  // (N − 1) % T leftover tokens are never read
      const int64_t rows = 5;
      TokenShard shard = random_shard(rows * seq_len + 1 + (extra % seq_len), gen);
      const std::vector<int32_t> tokens = shard.tokens;
      ShardRows shard_rows(std::move(shard), seq_len);
      ASSERT_EQ(shard_rows.num_rows(), rows) << "T = " << seq_len;
      const std::vector<int64_t> order = {4, 0, 2, 2, 1, 3};
      EXPECT_TRUE(same_batch(shard_rows.gather(order), naive_batch(tokens, seq_len, order)))
          << "T = " << seq_len;
    }
  }
}

TEST(DataLoader, ShardTooSmallForOneRowNamesFileTokensAndSeqLen) {
  std::mt19937 gen(2);
  EXPECT_EQ(ShardRows(random_shard(17, gen), 16).num_rows(), 1);  // exactly one row of T + 1
  for (int64_t tokens : {0, 1, 16}) {
    try {
      ShardRows rows(random_shard(tokens, gen, "data/tiny_val.bin"), 16);
      ADD_FAILURE() << tokens << " tokens: expected an error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("data/tiny_val.bin"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(tokens) + " tokens"), std::string::npos) << msg;
      EXPECT_NE(msg.find("train.seq_len + 1 = 17"), std::string::npos) << msg;
    }
  }
}

TEST(DataLoader, EpochPermutationIsTheDocumentedShuffleOfEveryRow) {
  for (int64_t rows : {1, 2, 3, 7, 13, 33}) {
    for (int64_t epoch : {0, 1, 5}) {
      const std::vector<int64_t> perm = epoch_permutation(42, epoch, rows);
      EXPECT_EQ(perm, naive_permutation(42, epoch, rows)) << "R = " << rows << ", epoch " << epoch;
      std::vector<int64_t> sorted = perm;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < rows; ++i) ASSERT_EQ(sorted[i], i) << "R = " << rows << ": not a permutation";
    }
  }
  // Epochs and seeds give different orders (33! orders: a collision would be a bug).
  EXPECT_NE(epoch_permutation(42, 0, 33), epoch_permutation(42, 1, 33));
  EXPECT_NE(epoch_permutation(42, 0, 33), epoch_permutation(43, 0, 33));
}

TEST(DataLoader, StepsReadConsecutiveGlobalRowsAcrossEpochs) {
  std::mt19937 gen(3);
  const int64_t seq_len = 3, rows = 7, global_batch = 3;  // GB does not divide R: steps straddle epochs
  TokenShard shard = random_shard(rows * seq_len + 2, gen);
  const std::vector<int32_t> tokens = shard.tokens;
  TrainBatches batches(ShardRows(std::move(shard), seq_len), {global_batch, 0}, 9);

  std::vector<std::set<int64_t>> seen_per_epoch(3);
  for (int64_t step = 0; step < 7; ++step) {  // global rows 0..20 = exactly 3 epochs
    std::vector<int64_t> expected_rows;
    for (int64_t g = step * global_batch; g < (step + 1) * global_batch; ++g) {
      const int64_t row = naive_permutation(9, g / rows, rows)[g % rows];
      expected_rows.push_back(row);
      seen_per_epoch[g / rows].insert(row);
    }
    const std::vector<Batch> got = batches.step_batches(step);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(same_batch(got[0], naive_batch(tokens, seq_len, expected_rows))) << "step " << step;
  }
  for (const std::set<int64_t>& seen : seen_per_epoch) EXPECT_EQ(seen.size(), static_cast<size_t>(rows));
}

TEST(DataLoader, BatchesArePureFunctionsOfTheStep) {
  std::mt19937 gen(4);
  const TokenShard shard = random_shard(13 * 5 + 1, gen);
  const BatchLayout layout{4, 2};
  TrainBatches walked(ShardRows(shard, 5), layout, 7);
  std::vector<std::vector<Batch>> history;
  for (int64_t step = 0; step < 12; ++step) history.push_back(walked.step_batches(step));

  for (int64_t step : {11, 0, 6, 3}) {  // a fresh loader, asked in any order (as a resumed run does)
    TrainBatches fresh(ShardRows(shard, 5), layout, 7);
    const std::vector<Batch> got = fresh.step_batches(step);
    ASSERT_EQ(got.size(), history[step].size());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_TRUE(same_batch(got[i], history[step][i])) << "step " << step;
  }
  TrainBatches other_seed(ShardRows(shard, 5), layout, 8);
  bool any_different = false;
  for (int64_t step = 0; step < 12; ++step)
    any_different |= !same_batch(concat(other_seed.step_batches(step)), concat(history[step]));
  EXPECT_TRUE(any_different) << "data.seed does not change the order";
}

TEST(DataLoader, MicroBatchesSplitTheStepInOrder) {
  std::mt19937 gen(5);
  const TokenShard shard = random_shard(11 * 4 + 3, gen);
  TrainBatches whole(ShardRows(shard, 4), {6, 0}, 1);
  for (int64_t micro : {1, 2, 3, 6}) {
    TrainBatches split(ShardRows(shard, 4), {6, micro}, 1);
    for (int64_t step = 0; step < 5; ++step) {
      const std::vector<Batch> parts = split.step_batches(step);
      ASSERT_EQ(static_cast<int64_t>(parts.size()), 6 / micro);
      for (const Batch& b : parts) EXPECT_EQ(b.inputs.shape(), (Shape{micro, 4}));
      EXPECT_TRUE(same_batch(concat(parts), whole.step_batches(step)[0]))
          << "micro " << micro << " step " << step;
    }
  }
  try {
    TrainBatches bad(ShardRows(shard, 4), {6, 4}, 1);
    ADD_FAILURE() << "micro-batch 4 of a global batch of 6: expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.micro_batch_size = 4"), std::string::npos) << e.what();
  }
}

TEST(DataLoader, RanksTakeContiguousSlicesOfTheGlobalBatch) {
  std::mt19937 gen(6);
  const TokenShard shard = random_shard(9 * 2 + 1, gen);
  TrainBatches single(ShardRows(shard, 2), {6, 0}, 3);
  for (int world : {2, 3}) {
    std::vector<TrainBatches> ranks;
    for (int r = 0; r < world; ++r) ranks.emplace_back(ShardRows(shard, 2), BatchLayout{6, 1, r, world}, 3);
    for (int64_t step = 0; step < 4; ++step) {
      std::vector<Batch> joined;
      for (TrainBatches& rank : ranks)
        for (Batch& b : rank.step_batches(step)) joined.push_back(b);
      EXPECT_TRUE(same_batch(concat(joined), single.step_batches(step)[0]))
          << world << " ranks, step " << step;
    }
  }
  EXPECT_THROW(TrainBatches(ShardRows(shard, 2), BatchLayout{6, 0, 0, 4}, 3), Error);
}

TEST(DataLoader, ValidationReadsRowsInFileOrder) {
  std::mt19937 gen(7);
  TokenShard shard = random_shard(7 * 3 + 1, gen);
  const std::vector<int32_t> tokens = shard.tokens;
  const ShardRows rows(std::move(shard), 3);
  struct Case {
    int64_t max_rows, batch_rows;
    std::vector<int64_t> sizes;
  };
  for (const Case& c : {Case{100, 3, {3, 3, 1}}, Case{5, 3, {3, 2}}, Case{7, 7, {7}}, Case{1, 4, {1}}}) {
    const std::vector<Batch> got = validation_batches(rows, c.max_rows, c.batch_rows);
    std::vector<int64_t> sizes;
    for (const Batch& b : got) sizes.push_back(b.inputs.dim(0));
    EXPECT_EQ(sizes, c.sizes) << "max_rows " << c.max_rows << ", batch_rows " << c.batch_rows;
    std::vector<int64_t> expected_rows;
    for (int64_t r = 0; r < std::min<int64_t>(c.max_rows, 7); ++r) expected_rows.push_back(r);
    EXPECT_TRUE(same_batch(concat(got), naive_batch(tokens, 3, expected_rows)));
  }
}

}  // namespace
}  // namespace engram
