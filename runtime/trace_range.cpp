#include "runtime/trace_range.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>

#ifdef ENGRAM_HAVE_CUDA
#include <nvtx3/nvToolsExt.h>  // NVTX v3: header-only, from the CUDA toolkit

#include "runtime/cuda/device.h"
#endif

namespace engram {

namespace {

std::atomic<bool> g_timing{false};
thread_local int t_open_ranges = 0;  // ranges open on this thread: only the outermost is timed
std::mutex g_mutex;
std::map<std::string, double> g_seconds;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Waits for the device's queued work, so that a range's wall time is its GPU time.
void wait_for_device() {
#ifdef ENGRAM_HAVE_CUDA
  if (cuda_device_count() > 0) cuda_synchronize();
#endif
}

// "layers.12.attn forward" -> "attn forward".
std::string phase_of(const char* name) {
  if (std::strncmp(name, "layers.", 7) == 0)
    if (const char* dot = std::strchr(name + 7, '.')) return dot + 1;
  return name;
}

}  // namespace

TraceRange::TraceRange(const char* name) : name_(name) {
#ifdef ENGRAM_HAVE_CUDA
  nvtxRangePushA(name);
#endif
  if (t_open_ranges++ == 0 && g_timing.load(std::memory_order_relaxed)) {
    wait_for_device();
    start_seconds_ = now_seconds();
  }
}

TraceRange::~TraceRange() {
  --t_open_ranges;
  if (start_seconds_ > 0.0) {
    wait_for_device();
    const double elapsed = now_seconds() - start_seconds_;
    const std::lock_guard<std::mutex> lock(g_mutex);
    g_seconds[phase_of(name_)] += elapsed;
  }
#ifdef ENGRAM_HAVE_CUDA
  nvtxRangePop();
#endif
}

void set_phase_timing(bool on) { g_timing.store(on); }

std::map<std::string, double> phase_seconds() {
  const std::lock_guard<std::mutex> lock(g_mutex);
  return g_seconds;
}

void reset_phase_seconds() {
  const std::lock_guard<std::mutex> lock(g_mutex);
  g_seconds.clear();
}

}  // namespace engram
