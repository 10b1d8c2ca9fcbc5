// The two inner loops of every attention kernel. `dot` keeps eight partial sums so the
// compiler can vectorise the reduction without -ffast-math (which would break -inf). And
// parallel_items, which runs a kernel's work items compiled for AVX2 and FMA where the CPU
// has them (the binary itself targets plain x86-64), as the matrix product does.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "threads.h"

namespace ra::cpu {

[[gnu::always_inline]] inline float dot(const float* __restrict a, const float* __restrict b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[i + u] * b[i + u];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

[[gnu::always_inline]] inline void axpy(float alpha, const float* __restrict x, float* __restrict y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RA_CPU_AVX2 1
// Whether the kernels compiled for AVX2 and FMA run: where the CPU has both, unless
// RING_ATTENTION_PORTABLE_CPU=1 asks for the portable code (its tests do).
inline bool use_avx2_fma() {
  static const bool yes = [] {
    __builtin_cpu_init();
    const char* portable = std::getenv("RING_ATTENTION_PORTABLE_CPU");
    const bool forced = portable && std::strcmp(portable, "1") == 0;
    return !forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}
#endif

// Item must be always_inline: it is compiled into each wrapper below with that wrapper's ISA.
template <auto Item, typename P>
void item_portable(const P& p, int64_t i) {
  Item(p, i);
}
#ifdef RA_CPU_AVX2
template <auto Item, typename P>
__attribute__((target("avx2,fma"))) void item_avx2(const P& p, int64_t i) {
  Item(p, i);
}
#endif

// parallel_for over items 0 .. n-1 of Item(p, i).
template <auto Item, typename P>
void parallel_items(int64_t n, const P& p) {
#ifdef RA_CPU_AVX2
  if (use_avx2_fma()) {
    parallel_for(n, [&](int64_t i) { item_avx2<Item>(p, i); });
    return;
  }
#endif
  parallel_for(n, [&](int64_t i) { item_portable<Item>(p, i); });
}

}  // namespace ra::cpu
