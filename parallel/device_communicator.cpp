// make_device_communicator (parallel/communicator.h): each rank's GPU, then NCCL where every rank
// has a GPU of its own, else the host communicator with staged tensors.
#ifdef ENGRAM_HAVE_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda/check.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/device.h"
#endif
#ifdef ENGRAM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace engram {

bool ranks_share_a_gpu(std::vector<std::string> gpu_ids) {
  std::sort(gpu_ids.begin(), gpu_ids.end());
  return std::adjacent_find(gpu_ids.begin(), gpu_ids.end()) != gpu_ids.end();
}

#ifdef ENGRAM_HAVE_CUDA
namespace {

// Makes `gpu` this process's device; the CUDA context (streams, cuBLASLt) is made on it.
void use_gpu(int gpu) {
  EG_CUDA_CHECK(cudaSetDevice(gpu));
  EG_CHECK(cuda_context().device == gpu, "this rank's CUDA context was made on GPU ", cuda_context().device,
           " before the communicator chose GPU ", gpu, ": call make_device_communicator before any CUDA work");
}

#ifdef ENGRAM_HAVE_NCCL
// The PCI bus id of every node rank's GPU, by node rank: a GPU's id is the same in every process,
// whatever CUDA_VISIBLE_DEVICES each was given (device numbers are not).
std::vector<std::string> node_gpu_ids(Communicator& node, int gpu) {
  constexpr int kIdBytes = 32;  // "0000:00:00.0" and its terminator fit with room to spare
  std::vector<uint8_t> mine(kIdBytes, 0);
  EG_CUDA_CHECK(cudaDeviceGetPCIBusId(reinterpret_cast<char*>(mine.data()), kIdBytes - 1, gpu));
  const std::vector<uint8_t> all = node.all_gather(mine);
  std::vector<std::string> ids;
  for (int r = 0; r < node.size(); ++r) ids.emplace_back(reinterpret_cast<const char*>(all.data()) + r * kIdBytes);
  return ids;
}
#endif

}  // namespace
#endif

std::unique_ptr<Communicator> make_device_communicator(Communicator& world, Device device) {
  if (device == Device::CPU) return world.split(0, world.rank());
#ifdef ENGRAM_HAVE_CUDA
  const std::unique_ptr<Communicator> node = world.split_node();
  const int gpus = cuda_device_count();
  EG_CHECK(gpus > 0, "rank ", world.rank(), " sees no CUDA device; a run on cuda needs one on every node");
  const int gpu = node->rank() % gpus;
  use_gpu(gpu);
#ifdef ENGRAM_HAVE_NCCL
  // NCCL's initialization is collective, so every rank must take the same path: they agree on it.
  const bool shares_gpu = ranks_share_a_gpu(node_gpu_ids(*node, gpu));
  if (world.all_reduce_sum<int64_t>(shares_gpu ? 1 : 0) == 0)
    return make_nccl_communicator(world.split(0, world.rank()));
#endif
  return world.split(0, world.rank());
#else
  EG_FAIL("a run on cuda: this build has no CUDA backend");
#endif
}

}  // namespace engram
