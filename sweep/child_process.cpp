#include "sweep/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "runtime/error.h"

extern char** environ;

namespace engram {

namespace {

ChildExit exit_of(int status) {
  ChildExit e;
  if (WIFEXITED(status)) {
    e.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    e.signal = WTERMSIG(status);
  }
  return e;
}

// The environment with `overrides` ("NAME=value") replacing entries of the same name.
std::vector<std::string> environment_with(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  const auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    bool replaced = false;
    for (const std::string& o : overrides) replaced = replaced || name_of(o) == name_of(entry);
    if (!replaced) env.push_back(entry);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

pid_t start_child(const ChildSpec& spec) {
  EG_ASSERT(!spec.argv.empty() && !spec.log_path.empty(), "a child needs a program and a log");
  std::vector<std::string> argv = spec.argv, env = environment_with(spec.env);
  std::vector<char*> argv_c = c_strings(argv), env_c = c_strings(env);

  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 2, spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (spec.stdout_path.empty())
    posix_spawn_file_actions_adddup2(&files, 2, 1);
  else
    posix_spawn_file_actions_addopen(&files, 1, spec.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  // A group of its own; SIGINT / SIGTERM at their defaults whatever this process does with them.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);

  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv_c[0], &files, &attr, argv_c.data(), env_c.data());
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  EG_CHECK(rc == 0, "cannot start ", spec.argv[0], " (output to ", spec.log_path, "): ", std::strerror(rc));
  return pid;
}

std::string ChildExit::describe() const {
  if (exit_code >= 0) return "exit code " + std::to_string(exit_code);
  return "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
}

ChildExit wait_child(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) EG_CHECK(errno == EINTR, "waitpid(", pid, "): ", std::strerror(errno));
  return exit_of(status);
}

std::optional<EndedChild> poll_ended_child() {
  int status = 0;
  const pid_t pid = waitpid(-1, &status, WNOHANG);
  if (pid <= 0) return std::nullopt;
  return EndedChild{pid, exit_of(status)};
}

// The group exists once the child has called setpgid; until then only the child itself.
void signal_child(pid_t pid, int sig) {
  if (kill(-pid, sig) != 0) kill(pid, sig);
}

bool child_group_alive(pid_t pid) { return kill(-pid, 0) == 0 || errno == EPERM; }

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  const std::string dirs = path;
  for (size_t begin = 0; begin <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', begin), dirs.size());
    const std::filesystem::path candidate = std::filesystem::path(dirs.substr(begin, end - begin)) / program;
    if (end > begin && access(candidate.c_str(), X_OK) == 0) return true;
    begin = end + 1;
  }
  return false;
}

}  // namespace engram
