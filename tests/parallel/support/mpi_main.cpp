// main() of the MPI-aware test executables: the world is created before the tests and destroyed
// (MPI finalized) after them; only rank 0 prints the usual GoogleTest report, other ranks print
// their failed assertions only; the exit code is non-zero on every rank if any rank failed.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>
#include <string>

#include "tests/parallel/support/mpi_test_env.h"

namespace engram::testing_util {

namespace {

Communicator* g_world = nullptr;

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  // The test's name is kept here: UnitTest::current_test_info() would take a lock GoogleTest holds
  // while it reports a result.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace

Communicator& world() { return *g_world; }

}  // namespace engram::testing_util

int main(int argc, char** argv) {
  std::unique_ptr<engram::Communicator> world = engram::make_world_communicator(&argc, &argv);
  engram::testing_util::g_world = world.get();
  ::testing::InitGoogleTest(&argc, argv);
  if (world->rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new engram::testing_util::FailurePrinter(world->rank()));
  }
  const int result = RUN_ALL_TESTS();
  const int64_t failed_ranks = world->all_reduce_sum<int64_t>(result != 0 ? 1 : 0);
  if (world->rank() == 0)
    std::printf("%s backend, %d rank(s): %lld failed\n", world->backend().c_str(), world->size(),
                static_cast<long long>(failed_ranks));
  return failed_ranks == 0 ? 0 : 1;
}
