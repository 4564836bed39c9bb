#include "runtime/log.h"

#include <cstdio>
#include <mutex>

namespace engram {
namespace {
int g_rank = 0;
std::mutex g_mutex;
}  // namespace

void set_log_rank(int rank) { g_rank = rank; }

void log_message(LogLevel level, const std::string& msg) {
  if (level < LogLevel::Error && g_rank != 0) return;
  static const char* names[] = {"info", "warn", "error"};
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[engram %s] %s\n", names[static_cast<int>(level)], msg.c_str());
}

}  // namespace engram
