#pragma once
// The sweep's child processes (training commands, engram-eval, the PNG converter): started with
// posix_spawn in a process group of their own, so that a stop reaches a whole command (a shell, an
// mpirun and its ranks) and nothing else.
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace engram {

struct ChildSpec {
  std::vector<std::string> argv;  // argv[0]: the program, a path
  std::string log_path;           // stderr is appended here, and stdout unless stdout_path is set
  std::string stdout_path;        // stdout into this file (truncated)
  std::vector<std::string> env;   // "NAME=value" entries replacing or adding to the environment
};

// Errors (engram::Error) name the program and why it could not start.
pid_t start_child(const ChildSpec& spec);

struct ChildExit {
  int exit_code = -1;  // -1: ended by a signal
  int signal = 0;
  bool ok() const { return exit_code == 0; }
  std::string describe() const;  // "exit code 3", "killed by signal 9 (Killed)"
};

ChildExit wait_child(pid_t pid);  // blocks until `pid` ends

struct EndedChild {
  pid_t pid = -1;
  ChildExit exit;
};
// A child of this process that has ended, if any (does not block).
std::optional<EndedChild> poll_ended_child();

// Sends `sig` to the child's process group.
void signal_child(pid_t pid, int sig);

// Whether any process of the child's group is still alive. A shell that ran a command without
// exec'ing it may end (on a signal) before the command does, which the sweep must wait for.
bool child_group_alive(pid_t pid);

// Whether `program` is an executable file in a directory of $PATH.
bool on_path(const std::string& program);

}  // namespace engram
