// Process-group membership and ownership math for every W in {1, 2, 4} and every EP dividing it
// (pure arithmetic, checked for every rank), then the real groups split from the world.
#include <gtest/gtest.h>

#include <set>

#include "parallel/process_groups.h"
#include "tests/parallel/support/mpi_test_env.h"

namespace engram {
namespace {

using testing_util::world;

TEST(EvenRange, SplitsContiguouslyWithTheFirstRemainderRangesLonger) {
  for (int64_t n : {0, 1, 3, 7, 13, 33, 646403}) {
    for (int parts = 1; parts <= 5; ++parts) {
      int64_t next = 0;
      for (int part = 0; part < parts; ++part) {
        const IndexRange range = even_range(n, parts, part);
        EXPECT_EQ(range.begin, next) << n << " over " << parts << ", part " << part;
        EXPECT_EQ(range.size(), n / parts + (part < n % parts ? 1 : 0))
            << n << " over " << parts << ", part " << part;
        next = range.end;
      }
      EXPECT_EQ(next, n) << n << " over " << parts;
      // Each index has exactly one owner, the part whose range contains it (a sample for the big n).
      for (int64_t i = 0; i < n; i += (n > 1000 ? 997 : 1)) {
        const int owner = even_range_owner(i, n, parts);
        for (int part = 0; part < parts; ++part)
          EXPECT_EQ(even_range(n, parts, part).contains(i), part == owner) << "index " << i << " of " << n;
      }
    }
  }
  EXPECT_THROW(even_range_owner(7, 7, 2), Error);
  EXPECT_THROW(even_range_owner(-1, 7, 2), Error);
}

TEST(ParallelLayout, MembershipAndOwnershipForEveryValidLayout) {
  const int64_t n_experts = 8;
  for (int w : {1, 2, 4}) {
    for (int ep = 1; ep <= w; ++ep) {
      if (w % ep != 0) continue;
      std::set<std::vector<int>> ep_groups, edp_groups;
      std::vector<int> expert_holders(n_experts, 0);
      for (int rank = 0; rank < w; ++rank) {
        const ParallelLayout layout(w, rank, ep, n_experts);
        SCOPED_TRACE("W " + std::to_string(w) + " EP " + std::to_string(ep) + " rank " +
                     std::to_string(rank));
        // Expert parallel: the EP consecutive ranks rank / EP·EP ..; position rank % EP.
        std::vector<int> expected_ep;
        for (int r = 0; r < w; ++r)
          if (r / ep == rank / ep) expected_ep.push_back(r);
        EXPECT_EQ(layout.expert_parallel_ranks(), expected_ep);
        EXPECT_EQ(layout.ep_size, ep);
        EXPECT_EQ(expected_ep[layout.ep_rank], rank);
        // Expert data parallel: same rank % EP, ascending.
        std::vector<int> expected_edp;
        for (int r = 0; r < w; ++r)
          if (r % ep == rank % ep) expected_edp.push_back(r);
        EXPECT_EQ(layout.expert_data_parallel_ranks(), expected_edp);
        EXPECT_EQ(layout.edp_size, w / ep);
        EXPECT_EQ(expected_edp[layout.edp_rank], rank);
        // Experts: contiguous block of E / EP.
        const IndexRange experts = layout.local_experts();
        EXPECT_EQ(experts.begin, layout.ep_rank * n_experts / ep);
        EXPECT_EQ(experts.end, (layout.ep_rank + 1) * n_experts / ep);
        for (int64_t e = experts.begin; e < experts.end; ++e) ++expert_holders[e];
        // Ranks of the same expert-data-parallel group hold the same experts.
        for (int other : expected_edp)
          EXPECT_EQ(ParallelLayout(w, other, ep, n_experts).local_experts(), experts);
        // Table rows over the world.
        EXPECT_EQ(layout.table_rows(13), even_range(13, w, rank));
        ep_groups.insert(expected_ep);
        edp_groups.insert(expected_edp);
      }
      EXPECT_EQ(static_cast<int>(ep_groups.size()), w / ep);
      EXPECT_EQ(static_cast<int>(edp_groups.size()), ep);
      // Every expert is held by exactly one rank of each expert-parallel group.
      for (int64_t e = 0; e < n_experts; ++e) EXPECT_EQ(expert_holders[e], w / ep) << "expert " << e;
    }
  }
}

// The error message of a layout, or "" if it is accepted.
std::string layout_error(int w, int ep, int64_t experts) {
  try {
    ParallelLayout(w, 0, ep, experts);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ParallelLayout, ImpossibleLayoutsAreRejectedWithTheRule) {
  EXPECT_NE(layout_error(4, 3, 6).find("parallel.expert_parallel = 3 must divide the world size 4"),
            std::string::npos);
  EXPECT_NE(layout_error(2, 2, 3).find("must divide the number of routed experts (moe.n_routed_experts = 3)"),
            std::string::npos);
  EXPECT_NE(layout_error(4, 0, 8).find("parallel.expert_parallel = 0 must be >= 1"), std::string::npos);
  EXPECT_NE(layout_error(2, 4, 8).find("must divide the world size 2"), std::string::npos);
  EXPECT_EQ(layout_error(4, 4, 8), "");
  EXPECT_THROW(expert_range(6, 4, 0), Error);
}

TEST(ProcessGroups, SplitFromTheWorldMatchTheLayout) {
  Communicator& comm = world();
  const int w = comm.size(), me = comm.rank();
  for (int ep = 1; ep <= w; ++ep) {
    if (w % ep != 0) continue;
    SCOPED_TRACE("EP " + std::to_string(ep));
    ProcessGroups groups(comm, ep, 4 * ep);
    const ParallelLayout& layout = groups.layout();
    EXPECT_EQ(&groups.world(), &comm);
    EXPECT_EQ(&groups.data_parallel(), &comm);
    // The table group: the world's ranks in the world's order, on a communicator of its own.
    EXPECT_NE(&groups.table(), &comm);
    const std::vector<int32_t> table_members = groups.table().all_gather(std::vector<int32_t>{me});
    std::vector<int32_t> world_ranks(w);
    for (int r = 0; r < w; ++r) world_ranks[r] = r;
    EXPECT_EQ(table_members, world_ranks);
    // Members of each sub-group, gathered over the group, are the layout's ranks in order.
    const std::vector<int32_t> ep_members = groups.expert_parallel().all_gather(std::vector<int32_t>{me});
    EXPECT_EQ(std::vector<int>(ep_members.begin(), ep_members.end()), layout.expert_parallel_ranks());
    const std::vector<int32_t> edp_members =
        groups.expert_data_parallel().all_gather(std::vector<int32_t>{me});
    EXPECT_EQ(std::vector<int>(edp_members.begin(), edp_members.end()), layout.expert_data_parallel_ranks());
    // Summing the first expert index over the expert-data-parallel group: all hold the same block.
    EXPECT_EQ(groups.expert_data_parallel().all_reduce_sum<int64_t>(layout.local_experts().begin),
              layout.edp_size * layout.local_experts().begin);
  }
  // A layout every rank rejects the same way, before any collective: no rank waits.
  if (w > 1) {
    EXPECT_THROW(ProcessGroups(comm, w + 1, 8), Error);
  }
  EXPECT_THROW(ProcessGroups(comm, 1, -1), Error);
}

}  // namespace
}  // namespace engram
