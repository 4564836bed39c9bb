// The registry behind kernels/cuda/deferred_errors.h: a fixed array of device slots, the slots in
// use (one per deferred check since the last wait, in issue order) and a pinned host mirror, so the
// slots travel back with the copy that the host waits for anyway and cost no wait of their own.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/deferred_errors.h"

namespace engram::kernels::cuda {

namespace {

// More checks than this between two waits cost an extra wait (an MoE layer defers 2–3 per pass and
// sort_by_expert waits every forward).
constexpr size_t kSlots = 64;

struct DeferredCheck {
  BadValueReport report;
  const char* kernel;
  int64_t limit;
};

struct Registry {
  unsigned long long* device = nullptr;  // [kSlots]; slots past pending.size() hold kNoBadValue
  unsigned long long* host = nullptr;    // [kSlots], pinned: the copy back is asynchronous
  std::vector<DeferredCheck> pending;    // pending[i] owns device[i]
};

Registry& registry() {
  // Never destroyed, like the CUDA context (tensors and kernels may outlive static destructors).
  // cudaMalloc, not the device allocator: a permanent 512 bytes outside its statistics.
  static Registry* r = [] {
    auto* made = new Registry();
    EG_CUDA_CHECK(cudaMalloc(&made->device, kSlots * sizeof(unsigned long long)));
    EG_CUDA_CHECK(cudaMallocHost(&made->host, kSlots * sizeof(unsigned long long)));
    EG_CUDA_CHECK(cudaMemsetAsync(made->device, 0xff, kSlots * sizeof(unsigned long long), compute_stream()));
    made->pending.reserve(kSlots);
    return made;
  }();
  return *r;
}

}  // namespace

unsigned long long* defer_bad_value_check(BadValueReport report, const char* kernel, int64_t limit,
                                          int64_t n_positions) {
  EG_ASSERT(n_positions < int64_t{0xffffffff}, kernel, ": ", n_positions,
            " positions to check; a deferred check packs a position in 32 bits");
  Registry& r = registry();
  if (r.pending.size() == kSlots) check_deferred_errors();  // frees every slot
  r.pending.push_back({report, kernel, limit});
  return r.device + (r.pending.size() - 1);
}

void copy_to_host_and_wait(void* dst, const void* src, size_t bytes) {
  Registry& r = registry();
  cudaStream_t stream = compute_stream();
  const size_t n = r.pending.size();
  if (n > 0)
    EG_CUDA_CHECK(cudaMemcpyAsync(r.host, r.device, n * sizeof(unsigned long long), cudaMemcpyDeviceToHost, stream));
  if (bytes > 0) EG_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  EG_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (n == 0) return;
  // Free the slots (in stream order, before any later kernel reports into them), then raise.
  EG_CUDA_CHECK(cudaMemsetAsync(r.device, 0xff, n * sizeof(unsigned long long), stream));
  size_t first = 0;
  while (first < n && r.host[first] == kNoBadValue) ++first;
  const DeferredCheck failed = first < n ? r.pending[first] : DeferredCheck{};
  r.pending.clear();
  if (first == n) return;
  const unsigned long long slot = r.host[first];
  failed.report(failed.kernel, static_cast<int64_t>(slot >> 32), static_cast<int32_t>(static_cast<uint32_t>(slot)),
                failed.limit);
}

}  // namespace engram::kernels::cuda
