#pragma once
// Aux-loss-free load balancing (MODEL.md §3, DeepSeek-V3): after every optimizer step each
// expert's routing bias moves by a fixed amount towards the mean load.
#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace engram {

// b_i ← b_i + rate·sign(mean_j load_j − load_i) for bias f32 [E] and load[E] (token-slot counts
// over the global batch): overloaded experts go down, underloaded go up, exactly-mean ones stay.
// rate 0 leaves the bias untouched.
void update_balancing_bias(Tensor& bias, const std::vector<int64_t>& load, float rate);

}  // namespace engram
