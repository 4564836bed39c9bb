// A tiny MPI program for tests/parallel/launcher/test_abort_all.cpp:
//   parallel_abort_helper <mode> <rank>
// mode "abort": that rank calls abort_all("bad file x"); mode "throw": that rank throws an
// engram::Error through run_or_abort_all; mode "none": nobody fails. Every other rank waits in a
// barrier, which would block forever if the failing rank did not take the whole job down.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "parallel/communicator.h"

int main(int argc, char** argv) {
  std::unique_ptr<engram::Communicator> world = engram::make_world_communicator(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "none";
  const int failing_rank = argc > 2 ? std::stoi(argv[2]) : 0;
  return engram::run_or_abort_all(*world, [&] {
    if (world->rank() == failing_rank) {
      // Let the other ranks block in the barrier first.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      if (mode == "abort") world->abort_all("bad file x");
      if (mode == "throw") EG_CHECK(false, "bad file y.bin: expected magic 'ENGR'");
    }
    world->barrier();
    const int64_t ranks = world->all_reduce_sum<int64_t>(1);
    if (world->rank() == 0) std::printf("all %lld ranks passed the barrier\n", static_cast<long long>(ranks));
    return 0;
  });
}
