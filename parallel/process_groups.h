#pragma once
// Process groups of one run (DESIGN.md decision 2) and the ownership math that goes with them.
//
// World size W, expert-parallel size EP (divides W and the routed-expert count E):
//   world                = data parallel: every rank, dense gradients are summed here;
//   expert parallel      = EP consecutive ranks {g·EP, .., g·EP + EP − 1}, g = rank / EP; the group's
//                          ranks hold disjoint expert blocks and exchange tokens;
//   expert data parallel = the W / EP ranks with the same rank % EP; they hold the same experts and
//                          sum those experts' gradients;
//   table group          = the world's ranks: each rank owns a contiguous row range of every Engram
//                          table. A communicator of its own (a copy of the world), so that on NCCL
//                          its lookups have their own stream and do not queue behind the gradient
//                          sums that run over the world during the backward pass.
#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace engram {

// Half-open range [begin, end) along dimension 0.
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool contains(int64_t i) const { return i >= begin && i < end; }
  bool operator==(const IndexRange&) const = default;
};

// n items split into `parts` contiguous ranges as evenly as possible: the first n % parts ranges hold
// one item more. even_range gives part `part`'s range; even_range_owner the part holding `index`.
IndexRange even_range(int64_t n, int parts, int part);
int even_range_owner(int64_t index, int64_t n, int parts);

// Experts held by expert-parallel rank ep_rank: [ep_rank·E/EP, (ep_rank+1)·E/EP).
IndexRange expert_range(int64_t n_experts, int ep_size, int ep_rank);

// Which groups a rank belongs to and what it holds; pure arithmetic, checked on construction.
struct ParallelLayout {
  ParallelLayout(int world_size, int rank, int expert_parallel, int64_t n_experts);

  int world_size = 1, rank = 0;
  int64_t n_experts = 0;
  int ep_size = 1, ep_rank = 0;    // expert-parallel group: rank / ep_size, position rank % ep_size
  int edp_size = 1, edp_rank = 0;  // expert-data-parallel group: rank % ep_size, position rank / ep_size

  std::vector<int> expert_parallel_ranks() const;       // world ranks of this rank's EP group, ascending
  std::vector<int> expert_data_parallel_ranks() const;  // world ranks holding the same experts, ascending
  IndexRange local_experts() const { return expert_range(n_experts, ep_size, ep_rank); }
  // This rank's rows of a table of `rows` rows, split over the table group (the world).
  IndexRange table_rows(int64_t rows) const { return even_range(rows, world_size, rank); }
};

class ProcessGroups {
 public:
  // Collective over world: splits it into the expert-parallel and expert-data-parallel groups. An
  // impossible layout is an error on every rank alike (it depends only on W, EP and E).
  ProcessGroups(Communicator& world, int expert_parallel, int64_t n_experts);

  const ParallelLayout& layout() const { return layout_; }
  Communicator& world() { return world_; }
  Communicator& data_parallel() { return world_; }
  Communicator& expert_parallel() { return *expert_parallel_; }
  Communicator& expert_data_parallel() { return *expert_data_parallel_; }
  Communicator& table() { return *table_; }

 private:
  Communicator& world_;
  ParallelLayout layout_;
  std::unique_ptr<Communicator> expert_parallel_;
  std::unique_ptr<Communicator> expert_data_parallel_;
  std::unique_ptr<Communicator> table_;
};

}  // namespace engram
