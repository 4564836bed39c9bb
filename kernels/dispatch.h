#pragma once
// Device dispatch for kernels. A family header declares each kernel once in namespace `cpu`
// (the reference implementation) and, in CUDA builds, once in namespace `cuda` with the same
// signature; EG_KERNEL(name) then defines kernels::name, which runs the implementation for the
// device of its first tensor argument. Modules only ever call kernels::name.
#include <type_traits>
#include <utility>

#include "runtime/tensor.h"

namespace engram::kernels {

template <class T>
constexpr bool is_tensor_v = std::is_same_v<std::remove_cvref_t<T>, Tensor>;

// Device of the first Tensor argument (CPU when there is none).
template <class... A>
Device first_device(const A&... args) {
  Device device = Device::CPU;
  bool found = false;
  (
      [&](const auto& a) {
        if constexpr (is_tensor_v<decltype(a)>) {
          if (!found && a.defined()) {
            device = a.device();
            found = true;
          }
        }
      }(args),
      ...);
  return device;
}

}  // namespace engram::kernels

#ifdef ENGRAM_HAVE_CUDA
#define EG_KERNEL_CUDA_CALL(name, args) return cuda::name(std::forward<A>(args)...)
#else
#define EG_KERNEL_CUDA_CALL(name, args) \
  EG_FAIL(#name ": tensor is on cuda but this build has no CUDA backend")
#endif

#define EG_KERNEL(name)                                                             \
  template <class... A>                                                             \
  inline decltype(auto) name(A&&... args) {                                         \
    if (::engram::kernels::first_device(args...) == ::engram::Device::CPU)          \
      return cpu::name(std::forward<A>(args)...);                                   \
    EG_KERNEL_CUDA_CALL(name, args);                                                \
  }

// A kernel with no CUDA version yet (so no cuda::name to call): on a cuda tensor it fails, naming
// itself. Replace with EG_KERNEL once kernels/cuda/<family>.cu defines it.
#define EG_KERNEL_CPU_ONLY(name)                                                    \
  template <class... A>                                                             \
  inline decltype(auto) name(A&&... args) {                                         \
    if (::engram::kernels::first_device(args...) != ::engram::Device::CPU)          \
      EG_FAIL(#name ": tensor is on cuda but the kernel has no CUDA version yet");   \
    return cpu::name(std::forward<A>(args)...);                                     \
  }

// Marks a small function both backends run (the per-element formula of a kernel), so the CPU
// reference and the CUDA kernel share one definition.
#ifdef __CUDACC__
#define EG_HOST_DEVICE __host__ __device__
#else
#define EG_HOST_DEVICE
#endif
