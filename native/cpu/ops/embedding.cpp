// Token embedding lookup and its scatter-add backward.
#include <cstring>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

void embedding_forward(const int32_t* ids, const float* table, float* out, int64_t M, int64_t C) {
  for_chunks(M, row_grain(C), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) std::memcpy(out + m * C, table + int64_t(ids[m]) * C, size_t(C) * sizeof(float));
  });
}

// Tokens with the same id add into the same row, so the work is split over columns, not
// tokens: each chunk of columns walks every token in order. No races, and the sum order
// is fixed.
void embedding_backward(const int32_t* ids, const float* dy, float* dtable, int64_t M, int64_t C, int32_t skip) {
  const int64_t grain = std::max<int64_t>(16, C / 64 / 16 * 16);
  for_chunks(C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t m = 0; m < M; ++m) {
      if (ids[m] == skip) continue;
      float* d = dtable + int64_t(ids[m]) * C;
      const float* g = dy + m * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  });
}

}  // namespace ra::cpu::ops
