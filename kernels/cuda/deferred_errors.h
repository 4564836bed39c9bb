#pragma once
// Invalid indices that CUDA kernels find on the device, raised by the host later, at a wait for the
// device that it makes anyway. Checking at once would stall the host for every kernel that reads
// indices made on the device (expert ids from topk_select, positions from sort_by_expert): 3–4 waits
// per MoE layer. Instead such a kernel records the first bad (position, value) in a device slot, and
// the next copy_to_host_and_wait (a FirstBadPosition read, a sum returned to the host,
// sort_by_expert's offsets, check_deferred_errors) raises the CPU kernel's error, naming the kernel
// that found it. Kernels that read a reported slot write nothing, as the CPU kernel throws before
// writing. Host-only declarations (tests and host code include this); like the compute stream, used
// from one host thread.
#include <cstddef>
#include <cstdint>

namespace engram::kernels::cuda {

// A device slot's value while no bad value has been reported into it.
constexpr unsigned long long kNoBadValue = ~0ull;

// Throws the CPU kernel's error for `value`, found at `position` of `kernel`'s index argument whose
// valid values are [0, limit).
using BadValueReport = void (*)(const char* kernel, int64_t position, int64_t value, int64_t limit);

// A device slot (kNoBadValue in stream order) into which one kernel launch reports its first bad
// value; `report` raises it at the next wait. `kernel` must outlive that wait (a string literal).
// Positions are packed in 32 bits: n_positions (the size of the checked argument) < 2^32 − 1.
unsigned long long* defer_bad_value_check(BadValueReport report, const char* kernel, int64_t limit,
                                          int64_t n_positions);

// Copies `bytes` from device `src` to host `dst` (nothing when bytes is 0) on the compute stream and
// waits for the device; then raises the first error deferred since the last wait, if there is one
// (later ones are dropped: the first is where things went wrong).
void copy_to_host_and_wait(void* dst, const void* src, size_t bytes);

// Waits for the device and raises the first deferred error: for host code that wants the errors of
// the kernels it queued reported now (tests, the end of a training step).
inline void check_deferred_errors() { copy_to_host_and_wait(nullptr, nullptr, 0); }

}  // namespace engram::kernels::cuda
