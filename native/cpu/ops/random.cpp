// Normal samples for parameter initialisation. Element i of stream s under a seed is a pure
// function of (seed, s, i): a splitmix64 hash of the counter gives two uniforms, Box-Muller in
// double turns each pair into two normals. So the values do not depend on the thread count,
// every rank with the same seed gets the same weights, and a 7B model fills in seconds
// rather than the minutes a JavaScript loop takes.
#include <cmath>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

void random_normal(float* out, int64_t n, uint64_t seed, uint64_t stream, double std) {
  const uint64_t key = splitmix64(seed ^ splitmix64(stream + 0x632BE59BD9B4E019ull));
  const int64_t pairs = (n + 1) / 2;
  constexpr double two_pi = 6.283185307179586476925286766559, inv53 = 1.0 / 9007199254740992.0;  // 2^-53
  for_chunks(pairs, int64_t(1) << 14, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const double u1 = double((splitmix64(key + 2 * uint64_t(p)) >> 11) + 1) * inv53;  // (0, 1]: log is finite
      const double u2 = double(splitmix64(key + 2 * uint64_t(p) + 1) >> 11) * inv53;    // [0, 1)
      const double r = std * std::sqrt(-2.0 * std::log(u1)), a = two_pi * u2;
      out[2 * p] = float(r * std::cos(a));
      if (2 * p + 1 < n) out[2 * p + 1] = float(r * std::sin(a));
    }
  });
}

}  // namespace ra::cpu::ops
