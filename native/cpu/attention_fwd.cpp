// Forward: each work item is one (batch, head, block of BR query rows). It walks the key
// tiles with an online softmax, so no seq x seq matrix ever exists; under causal masking
// the tiles wholly above the diagonal are never visited. With `accumulate` the running
// (out, lse) of earlier ring steps seed the softmax state, which merges this block's
// keys into it exactly, with no separate pass over the output.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"
#include "threads.h"
#include "vec.h"

namespace ra::cpu {

namespace {
constexpr int BR = 32;  // query rows per item: enough items to balance 2-64 threads at 1K tokens
constexpr int BC = 64;  // keys per tile: the score tile (32x64 floats) stays in L1
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// One work item: query rows [BR qb, BR qb + BR) of one (batch, head).
[[gnu::always_inline]] inline void forward_item(const AttnParams& p, int64_t item) {
  const int D = p.head_dim;
  const int group = p.heads / p.kv_heads;
  const int64_t qblocks = (p.seq_q + BR - 1) / BR;
  const int qb = int(item % qblocks);
  const int h = int(item / qblocks % p.heads);
  const int b = int(item / qblocks / p.heads);
  const int kh = h / group;
  const int i0 = qb * BR, rows = std::min(BR, p.seq_q - i0);

  const float* q = p.q + b * p.q_batch_stride + int64_t(i0) * p.q_row_stride + int64_t(h) * D;
  const float* k = p.k + b * p.k_batch_stride + int64_t(kh) * D;
  const float* v = p.v + b * p.k_batch_stride + int64_t(kh) * D;
  float* out = p.out + b * p.o_batch_stride + int64_t(i0) * p.o_row_stride + int64_t(h) * D;
  float* lse = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + i0;
  const int32_t* doc_q = p.doc_q ? p.doc_q + b * p.doc_q_batch_stride + i0 : nullptr;
  const int32_t* doc_k = p.doc_k ? p.doc_k + b * p.doc_k_batch_stride : nullptr;

  float m[BR], l[BR], s[BR * BC];
  std::vector<float> acc(size_t(rows) * D, 0.f);
  for (int r = 0; r < rows; ++r) {
    const bool seeded = p.accumulate && lse[r] != NEG_INF;
    m[r] = seeded ? lse[r] : NEG_INF;
    l[r] = seeded ? 1.f : 0.f;
    if (seeded) std::copy(out + r * p.o_row_stride, out + r * p.o_row_stride + D, &acc[size_t(r) * D]);
  }

  // Keys past the last row's diagonal are invisible to the whole block: stop there.
  int64_t kend = p.seq_k;
  if (p.causal) kend = std::clamp<int64_t>(i0 + rows - 1 + p.causal_offset + 1, 0, p.seq_k);
  for (int64_t j0 = 0; j0 < kend; j0 += BC) {
    const int cols = int(std::min<int64_t>(BC, kend - j0));
    for (int r = 0; r < rows; ++r) {
      const float* qr = q + r * p.q_row_stride;
      const int64_t last = p.causal ? i0 + r + p.causal_offset : p.seq_k;  // last visible key
      float* sr = s + r * BC;
      for (int c = 0; c < cols; ++c)
        sr[c] = (j0 + c <= last && (!doc_q || doc_k[j0 + c] == doc_q[r])) ? dot(qr, k + (j0 + c) * p.k_row_stride, D) * p.scale
                                                                       : NEG_INF;
    }
    for (int r = 0; r < rows; ++r) {
      float* sr = s + r * BC;
      float mx = m[r];
      // A NaN score (a NaN in q or k) wins, so that it reaches out and lse: std::max would drop
      // it and a row of them would pass for one that sees no key (0 and -inf).
      for (int c = 0; c < cols; ++c) mx = sr[c] > mx || sr[c] != sr[c] ? sr[c] : mx;
      if (mx == NEG_INF) continue;  // nothing visible yet for this row
      const float alpha = std::exp(m[r] - mx);
      float* ar = &acc[size_t(r) * D];
      float sum = 0.f;
      for (int d = 0; d < D; ++d) ar[d] *= alpha;
      for (int c = 0; c < cols; ++c) {
        const float pc = std::exp(sr[c] - mx);
        sum += pc;
        if (pc != 0.f) axpy(pc, v + (j0 + c) * p.k_row_stride, ar, D);
      }
      l[r] = l[r] * alpha + sum;
      m[r] = mx;
    }
  }

  for (int r = 0; r < rows; ++r) {
    float* o = out + r * p.o_row_stride;
    if (l[r] == 0.f) {  // a row that sees no key: 0 and -inf, never NaN
      std::fill(o, o + D, 0.f);
      lse[r] = NEG_INF;
      continue;
    }
    const float inv = 1.f / l[r];
    for (int d = 0; d < D; ++d) o[d] = acc[size_t(r) * D + d] * inv;
    lse[r] = m[r] + std::log(l[r]);
  }
}
}  // namespace

void attention_forward(const AttnParams& p) {
  parallel_items<forward_item>(int64_t(p.batch) * p.heads * ((p.seq_q + BR - 1) / BR), p);
}

}  // namespace ra::cpu
