// Failure handling across ranks: a rank that fails (abort_all, or an exception caught by
// run_or_abort_all) ends the whole mpirun job with a non-zero exit code within seconds, and its
// message reaches the output, while the other ranks wait in a barrier that would never complete.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace {

struct JobResult {
  int exit_code = -1;
  double seconds = 0.0;
  std::string output;
};

// Runs `command` through the shell with a hard 60 s limit (timeout exits 124 on a hang).
JobResult run(const std::string& command) {
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  const std::string log = ::testing::TempDir() + "engram_abort_" + std::to_string(::getpid()) + ".log";
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(("timeout 60 " + command + " > " + log + " 2>&1").c_str());
  JobResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  r.output = text.str();
  std::remove(log.c_str());
  return r;
}

std::string mpirun(int ranks, const std::string& args) {
  return std::string(ENGRAM_MPIEXEC) + " -np " + std::to_string(ranks) + " --oversubscribe " +
         ENGRAM_ABORT_HELPER + " " + args;
}

constexpr double kWithinSeconds = 20.0;

TEST(AbortAll, NobodyFailingExitsZero) {
  const JobResult r = run(mpirun(2, "none 0"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("all 2 ranks passed the barrier"), std::string::npos) << r.output;
}

TEST(AbortAll, Rank1AbortEndsTwoRanks) {
  const JobResult r = run(mpirun(2, "abort 1"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "mpirun hung until the timeout:\n" << r.output;
  EXPECT_LT(r.seconds, kWithinSeconds) << r.output;
  EXPECT_NE(r.output.find("engram: rank 1 of 2 failed: bad file x"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("passed the barrier"), std::string::npos) << r.output;
}

TEST(AbortAll, ExceptionOnRank2EndsFourRanks) {
  const JobResult r = run(mpirun(4, "throw 2"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "mpirun hung until the timeout:\n" << r.output;
  EXPECT_LT(r.seconds, kWithinSeconds) << r.output;
  EXPECT_NE(r.output.find("engram: rank 2 of 4 failed:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bad file y.bin: expected magic 'ENGR'"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("passed the barrier"), std::string::npos) << r.output;
}

TEST(AbortAll, WithoutMpirunTheLocalWorldExitsOne) {
  const JobResult r = run(std::string(ENGRAM_ABORT_HELPER) + " abort 0");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("engram: rank 0 of 1 failed: bad file x"), std::string::npos) << r.output;
}

}  // namespace
