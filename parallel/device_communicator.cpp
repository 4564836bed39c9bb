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
#include "parallel/communicator.h"

namespace engram {

#ifdef ENGRAM_HAVE_CUDA
namespace {

// Makes `gpu` this process's device; the CUDA context (streams, cuBLASLt) is made on it.
void use_gpu(int gpu) {
  EG_CUDA_CHECK(cudaSetDevice(gpu));
  EG_CHECK(cuda_context().device == gpu, "this rank's CUDA context was made on GPU ", cuda_context().device,
           " before the communicator chose GPU ", gpu, ": call make_device_communicator before any CUDA work");
}

}  // namespace
#endif

std::unique_ptr<Communicator> make_device_communicator(Communicator& world, Device device) {
  if (device == Device::CPU) return world.split(0, world.rank());
#ifdef ENGRAM_HAVE_CUDA
  const std::unique_ptr<Communicator> node = world.split_node();
  const int gpus = cuda_device_count();
  EG_CHECK(gpus > 0, "rank ", world.rank(), " sees no CUDA device; a run on cuda needs one on every node");
  use_gpu(node->rank() % gpus);
#ifdef ENGRAM_HAVE_NCCL
  // NCCL's initialization is collective, so every rank must take the same path: they agree on it.
  const bool shares_gpu = node->size() > gpus;
  if (world.all_reduce_sum<int64_t>(shares_gpu ? 1 : 0) == 0)
    return make_nccl_communicator(world.split(0, world.rank()));
#endif
  return world.split(0, world.rank());
#else
  EG_FAIL("a run on cuda: this build has no CUDA backend");
#endif
}

}  // namespace engram
