// for_chunks: parallel_for over [0, n) cut into pieces of `grain` items; the cut depends
// only on n and grain, never on the thread count, so per-chunk partial sums are
// deterministic.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../threads.h"

namespace ra::cpu::ops {

template <typename F>
void for_chunks(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int64_t items = (n + grain - 1) / grain;
  if (items == 1) return fn(int64_t(0), n);
  parallel_for(items, [&](int64_t i) { fn(i * grain, std::min(n, (i + 1) * grain)); });
}

// Rows per chunk so that a chunk holds about 16K elements of work (at least one row).
inline int64_t row_grain(int64_t row_elems) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, row_elems)); }

}  // namespace ra::cpu::ops
