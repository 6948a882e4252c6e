// splitmix64 (Steele, Lea, Flood 2014): a 64-bit mixer whose outputs are well spread even for
// consecutive inputs. The sampler derives its counter-based random streams from it and the prefix
// cache chains block hashes with it.
#pragma once

#include <cstdint>

namespace zr {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace zr
