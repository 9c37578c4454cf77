// Clip-Cov's random keys (entropy_ops/backends/token_kernel.py, "Random keys"), shared by the CPU
// and CUDA kernels (torch-free, device-compatible): key i of a call is output number first + i of
// the SplitMix64 generator seeded with `seed`, shifted to 62 bits. Counter-based, so any slice of
// the stream is computed without the entries before it.
#pragma once

#include <stdint.h>

#include "entropy_ops/dtype.h"

namespace entropy_ops {

// Output number j (0-based) of SplitMix64 seeded with s (Steele, Lea, Flood, OOPSLA 2014), in
// unsigned arithmetic modulo 2^64, as a key in [0, 2^62).
EO_HOST_DEVICE inline int64_t random_key(uint64_t s, uint64_t j) {
  uint64_t z = s + (j + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<int64_t>(z >> 2);
}

}  // namespace entropy_ops
