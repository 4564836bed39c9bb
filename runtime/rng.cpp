#include "runtime/rng.h"

#include <cmath>

namespace engram {

double normal_at(uint64_t key, uint64_t index) {
  double u1 = uniform_open(splitmix64_at(key, 2 * index + 1));
  double u2 = uniform_open(splitmix64_at(key, 2 * index + 2));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

}  // namespace engram
