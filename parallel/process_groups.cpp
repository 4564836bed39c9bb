#include "parallel/process_groups.h"

#include <algorithm>

namespace engram {

IndexRange even_range(int64_t n, int parts, int part) {
  EG_ASSERT(n >= 0 && parts >= 1 && part >= 0 && part < parts, "even_range(", n, ", ", parts, ", ", part,
            ")");
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = part * base + std::min<int64_t>(part, extra);
  return {begin, begin + base + (part < extra ? 1 : 0)};
}

int even_range_owner(int64_t index, int64_t n, int parts) {
  EG_CHECK(index >= 0 && index < n, "index ", index, " is outside [0, ", n, ")");
  const int64_t base = n / parts, extra = n % parts;
  const int64_t long_items = extra * (base + 1);  // items held by the first `extra` (longer) ranges
  if (index < long_items) return static_cast<int>(index / (base + 1));
  return static_cast<int>(extra + (index - long_items) / base);
}

IndexRange expert_range(int64_t n_experts, int ep_size, int ep_rank) {
  EG_CHECK(ep_size >= 1 && n_experts % ep_size == 0, "expert parallel size ", ep_size,
           " must divide the number of routed experts ", n_experts);
  EG_ASSERT(ep_rank >= 0 && ep_rank < ep_size, "expert-parallel rank ", ep_rank, " outside [0, ", ep_size,
            ")");
  const int64_t per_rank = n_experts / ep_size;
  return {ep_rank * per_rank, (ep_rank + 1) * per_rank};
}

ParallelLayout::ParallelLayout(int world_size_, int rank_, int expert_parallel, int64_t n_experts_)
    : world_size(world_size_), rank(rank_), n_experts(n_experts_) {
  EG_ASSERT(world_size >= 1 && rank >= 0 && rank < world_size, "rank ", rank, " of ", world_size);
  EG_CHECK(expert_parallel >= 1, "parallel.expert_parallel = ", expert_parallel, " must be >= 1");
  EG_CHECK(world_size % expert_parallel == 0, "parallel.expert_parallel = ", expert_parallel,
           " must divide the world size ", world_size, " (the number of ranks)");
  EG_CHECK(n_experts >= 0 && n_experts % expert_parallel == 0, "parallel.expert_parallel = ", expert_parallel,
           " must divide the number of routed experts (moe.n_routed_experts = ", n_experts, ")");
  ep_size = expert_parallel;
  ep_rank = rank % ep_size;
  edp_size = world_size / ep_size;
  edp_rank = rank / ep_size;
}

std::vector<int> ParallelLayout::expert_parallel_ranks() const {
  std::vector<int> ranks;
  for (int i = 0; i < ep_size; ++i) ranks.push_back(edp_rank * ep_size + i);
  return ranks;
}

std::vector<int> ParallelLayout::expert_data_parallel_ranks() const {
  std::vector<int> ranks;
  for (int i = 0; i < edp_size; ++i) ranks.push_back(i * ep_size + ep_rank);
  return ranks;
}

ProcessGroups::ProcessGroups(Communicator& world, int expert_parallel, int64_t n_experts)
    : world_(world), layout_(world.size(), world.rank(), expert_parallel, n_experts) {
  // Colors are the group indices; keys keep world order inside each group.
  expert_parallel_ = world.split(layout_.edp_rank, world.rank());
  expert_data_parallel_ = world.split(layout_.ep_rank, world.rank());
  table_ = world.split(0, world.rank());
  EG_ASSERT(expert_parallel_->size() == layout_.ep_size && expert_parallel_->rank() == layout_.ep_rank,
            "expert-parallel group does not match the layout");
  EG_ASSERT(
      expert_data_parallel_->size() == layout_.edp_size && expert_data_parallel_->rank() == layout_.edp_rank,
      "expert-data-parallel group does not match the layout");
}

}  // namespace engram
