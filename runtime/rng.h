#pragma once
// Counter-based randomness. SplitMix64's k-th output is a pure function of (start state, k), so
// any element of any tensor can be drawn without drawing the ones before it: parameter init is
// then identical for every sharding, rank count and backend (MODEL.md §5).
#include <cstdint>
#include <string_view>

namespace engram {

inline constexpr uint64_t kSplitMixGamma = 0x9E3779B97F4A7C15ULL;

// SplitMix64 output function applied to a state value.
inline constexpr uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Sequential SplitMix64 (the Engram hash multipliers use this, MODEL.md §4.2).
inline uint64_t splitmix64_next(uint64_t& state) {
  state += kSplitMixGamma;
  return splitmix64_mix(state);
}

// The k-th output (k >= 1) of a SplitMix64 whose state starts at `key`.
inline constexpr uint64_t splitmix64_at(uint64_t key, uint64_t k) {
  return splitmix64_mix(key + k * kSplitMixGamma);
}

// FNV-1a, 64-bit: stable hash of parameter names.
inline constexpr uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return h;
}

// Stream key for (seed, name): every named stream is independent of the others.
inline constexpr uint64_t stream_key(uint64_t seed, std::string_view name) {
  return splitmix64_mix(seed * kSplitMixGamma ^ fnv1a64(name));
}

// Uniform in (0, 1) from 53 random bits; never 0, so log() is safe.
inline double uniform_open(uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }

// Standard normal for element `index` of stream `key` (Box-Muller on outputs 2i+1, 2i+2).
double normal_at(uint64_t key, uint64_t index);

}  // namespace engram
