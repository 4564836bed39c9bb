#include "train/gradient_buckets.h"

#include <algorithm>

#include "parallel/process_groups.h"
#include "runtime/config/config.h"

namespace engram {

namespace {

constexpr int64_t kAlignFloats = 64;  // 256 bytes: where every device allocation starts

int64_t aligned(int64_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

// The group that sums p's gradient; null when nothing does (no dense gradient: Engram tables, whose
// owners receive the row sums in backward, and balancing biases; or a group of one rank).
Communicator* summing_group(const Parameter& p, ProcessGroups& groups) {
  if (!p.grad.defined()) return nullptr;
  Communicator* group = nullptr;
  switch (p.shard) {
    case ShardKind::Replicated:
      group = &groups.world();
      break;
    case ShardKind::Experts:
      group = &groups.expert_data_parallel();
      break;
    case ShardKind::Rows:
      EG_ASSERT(false, p.name, ": row-sharded parameters with dense gradients are not supported");
  }
  return group->size() > 1 ? group : nullptr;
}

}  // namespace

GradientBuckets::GradientBuckets(ParameterRegistry& params, ProcessGroups& groups, int64_t bucket_bytes) {
  EG_CHECK(bucket_bytes >= 0, "gradient bucket size ", bucket_bytes, " bytes must be >= 0");
  const std::vector<Parameter*>& all = params.all();
  for (Communicator* group : {&groups.world(), &groups.expert_data_parallel()}) {
    std::vector<size_t> members;  // reverse registration order
    for (size_t i = all.size(); i-- > 0;)
      if (summing_group(*all[i], groups) == group) members.push_back(i);
    if (members.empty()) continue;

    std::vector<int64_t> offset;
    int64_t total = 0;
    for (size_t i : members) {
      offset.push_back(total);
      total += aligned(all[i]->grad.numel());
    }
    // Zeros: the padding between views is summed too, and stays 0.
    // Kept alive by the views and bucket spans that share its storage.
    const Tensor flat = Tensor::zeros({total}, DType::F32, all[members[0]]->grad.device());

    size_t first_member = 0;  // of the bucket being filled
    for (size_t m = 0; m < members.size(); ++m) {
      Parameter& p = *all[members[m]];
      Tensor view = flat.slice(offset[m], offset[m] + p.grad.numel()).view(p.grad.shape());
      view.copy_from(p.grad);
      p.grad = view;
      const int64_t begin = offset[first_member], end = m + 1 < members.size() ? offset[m + 1] : total;
      if ((end - begin) * static_cast<int64_t>(sizeof(float)) >= bucket_bytes || m + 1 == members.size()) {
        buckets_.push_back({group, std::vector<size_t>(members.begin() + first_member, members.begin() + m + 1),
                            flat.slice(begin, end), nullptr});
        first_member = m + 1;
      }
    }
  }
  std::sort(buckets_.begin(), buckets_.end(),
            [](const Bucket& a, const Bucket& b) { return a.params.back() > b.params.back(); });
}

void GradientBuckets::start(Bucket& bucket) { bucket.pending = bucket.group->start_all_reduce_sum(bucket.span); }

void GradientBuckets::gradients_final_from(size_t first_final) {
  while (next_ < buckets_.size() && buckets_[next_].params.back() >= first_final) start(buckets_[next_++]);
}

void GradientBuckets::finish() {
  gradients_final_from(0);
  for (Bucket& bucket : buckets_) {
    bucket.pending->wait();
    bucket.pending.reset();
  }
  next_ = 0;
}

std::vector<GradientBuckets::BucketInfo> GradientBuckets::buckets() const {
  std::vector<BucketInfo> info;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    const Bucket& b = buckets_[i];
    info.push_back({b.group, b.params, static_cast<int64_t>(b.span.nbytes()), i < next_});
  }
  return info;
}

}  // namespace engram
