#include "train/data_loader.h"

#include <algorithm>
#include <utility>

#include "runtime/rng.h"

namespace engram {

ShardRows::ShardRows(TokenShard shard, int64_t seq_len) : shard_(std::move(shard)), seq_len_(seq_len) {
  EG_CHECK(seq_len_ >= 1, "train.seq_len = ", seq_len_, " must be >= 1");
  const int64_t tokens = static_cast<int64_t>(shard_.tokens.size());
  num_rows_ = tokens > 0 ? (tokens - 1) / seq_len_ : 0;
  EG_CHECK(num_rows_ >= 1, shard_.path, ": ", tokens,
           " tokens are too few for one row of train.seq_len + 1 = ", seq_len_ + 1, " tokens");
}

Batch ShardRows::gather(const std::vector<int64_t>& rows) const {
  const int64_t n = static_cast<int64_t>(rows.size());
  Batch batch{Tensor::empty({n, seq_len_}, DType::I32), Tensor::empty({n, seq_len_}, DType::I32)};
  int32_t* inputs = batch.inputs.data<int32_t>();
  int32_t* targets = batch.targets.data<int32_t>();
  for (int64_t b = 0; b < n; ++b) {
    EG_ASSERT(rows[b] >= 0 && rows[b] < num_rows_, "row ", rows[b], " of ", num_rows_);
    const int32_t* row = shard_.tokens.data() + rows[b] * seq_len_;
    std::copy(row, row + seq_len_, inputs + b * seq_len_);
    std::copy(row + 1, row + 1 + seq_len_, targets + b * seq_len_);
  }
  return batch;
}

std::vector<int64_t> epoch_permutation(uint64_t data_seed, int64_t epoch, int64_t num_rows) {
  std::vector<int64_t> perm(static_cast<size_t>(num_rows));
  for (int64_t i = 0; i < num_rows; ++i) perm[i] = i;
  const uint64_t key = stream_key(data_seed, "data/epoch/" + std::to_string(epoch));
  for (int64_t i = num_rows - 1; i >= 1; --i) {
    const uint64_t draw = splitmix64_at(key, static_cast<uint64_t>(num_rows - i));
    const int64_t j = static_cast<int64_t>(draw % static_cast<uint64_t>(i + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

TrainBatches::TrainBatches(ShardRows rows, const BatchLayout& layout, uint64_t data_seed)
    : rows_(std::move(rows)), layout_(layout), data_seed_(data_seed) {
  EG_CHECK(layout_.world >= 1 && layout_.rank >= 0 && layout_.rank < layout_.world, "rank ", layout_.rank,
           " must be in [0, world = ", layout_.world, ")");
  EG_CHECK(layout_.global_batch >= 1, "train.global_batch_size = ", layout_.global_batch, " must be >= 1");
  EG_CHECK(layout_.global_batch % layout_.world == 0, "train.global_batch_size = ", layout_.global_batch,
           " must be divisible by the number of data-parallel ranks (", layout_.world, ")");
  const int64_t share = layout_.global_batch / layout_.world;
  EG_CHECK(layout_.micro_batch >= 0 && (layout_.micro_batch == 0 || share % layout_.micro_batch == 0),
           "train.micro_batch_size = ", layout_.micro_batch, " must divide the rows per rank (", share,
           " = train.global_batch_size / ", layout_.world, " ranks)");
}

const std::vector<int64_t>& TrainBatches::epoch_permutation(int64_t epoch) {
  if (epoch != cached_epoch_) {
    cached_perm_ = engram::epoch_permutation(data_seed_, epoch, rows_.num_rows());
    cached_epoch_ = epoch;
  }
  return cached_perm_;
}

int64_t TrainBatches::row_at(int64_t global_row) {
  EG_ASSERT(global_row >= 0, "global row ", global_row);
  const int64_t r = rows_.num_rows();
  return epoch_permutation(global_row / r)[static_cast<size_t>(global_row % r)];
}

std::vector<Batch> TrainBatches::step_batches(int64_t step) {
  EG_ASSERT(step >= 0, "step ", step);
  const int64_t share = layout_.global_batch / layout_.world;
  const int64_t micro = layout_.micro_batch > 0 ? layout_.micro_batch : share;
  const int64_t first = step * layout_.global_batch + layout_.rank * share;
  std::vector<Batch> batches;
  for (int64_t begin = 0; begin < share; begin += micro) {
    std::vector<int64_t> rows(static_cast<size_t>(micro));
    for (int64_t b = 0; b < micro; ++b) rows[b] = row_at(first + begin + b);
    batches.push_back(rows_.gather(rows));
  }
  return batches;
}

std::vector<Batch> validation_batches(const ShardRows& rows, int64_t max_rows, int64_t batch_rows) {
  EG_ASSERT(batch_rows >= 1, "batch_rows ", batch_rows);
  const int64_t total = std::min(max_rows, rows.num_rows());
  std::vector<Batch> batches;
  for (int64_t begin = 0; begin < total; begin += batch_rows) {
    std::vector<int64_t> ids;
    for (int64_t c = begin; c < std::min(begin + batch_rows, total); ++c) ids.push_back(c);
    batches.push_back(rows.gather(ids));
  }
  return batches;
}

}  // namespace engram
