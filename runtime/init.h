#pragma once
// Sharding-invariant parameter initialization (MODEL.md §5): element i of the full, unsharded
// parameter `name` is a pure function of (seed, name, i), computed in double on the host and
// rounded to float. A shard fills its slice by passing the flat offset of its first element.
#include <cstdint>
#include <string>

#include "runtime/tensor.h"

namespace engram {

enum class InitKind { Normal, Ones, Zeros };

struct InitSpec {
  InitKind kind = InitKind::Zeros;
  double std = 0.0;  // Normal only
};

// Fills `out` (F32, CPU) with elements [flat_offset, flat_offset + out.numel()) of the full init.
void init_parameter(Tensor& out, uint64_t seed, const std::string& name, const InitSpec& spec,
                    int64_t flat_offset = 0);

}  // namespace engram
