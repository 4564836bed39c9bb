#pragma once
// The world communicator of an MPI-aware test executable (tests/parallel/support/mpi_main.cpp) and
// helpers for tests that run on every rank at once.
#include <cstdint>
#include <random>
#include <vector>

#include "parallel/communicator.h"

namespace engram::testing_util {

// The world of this test run: MPI under mpirun, a Local group of one otherwise.
Communicator& world();

// Sizes of a global batch split over the ranks: uneven and including empty ranks, identical on every
// rank (so every rank can build the whole batch and take its slice).
inline std::vector<int64_t> uneven_split(int ranks, std::mt19937& gen, int64_t max_per_rank) {
  std::uniform_int_distribution<int64_t> dist(max_per_rank / 2, max_per_rank);
  std::vector<int64_t> sizes(ranks);
  for (int64_t& s : sizes) s = dist(gen);
  if (ranks > 1) sizes[1] = 0;  // one rank with nothing at all
  if (ranks > 2) sizes[2] = max_per_rank;
  return sizes;
}

// Every rank's vector, concatenated in rank order, on every rank (sizes may differ).
template <class T>
std::vector<T> gather_to_all(Communicator& comm, const std::vector<T>& mine) {
  const int64_t n = static_cast<int64_t>(mine.size());
  const std::vector<int64_t> recv_counts = comm.all_gather(std::vector<int64_t>{n});
  std::vector<T> send;
  for (int d = 0; d < comm.size(); ++d) send.insert(send.end(), mine.begin(), mine.end());
  return comm.all_to_all_v(send, std::vector<int64_t>(comm.size(), n), recv_counts);
}

inline int64_t prefix(const std::vector<int64_t>& sizes, int upto) {
  int64_t sum = 0;
  for (int r = 0; r < upto; ++r) sum += sizes[r];
  return sum;
}

}  // namespace engram::testing_util
