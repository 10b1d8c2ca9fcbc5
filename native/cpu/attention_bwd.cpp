// Backward by recomputation (FlashAttention-2): probabilities are rebuilt from q, k and the
// forward's lse, never stored. Two passes keep every write private to one work item, so
// the result is deterministic with no atomics: pass 1 owns query blocks and builds dq,
// pass 2 owns key blocks and builds dk/dv, summing over the query heads of a GQA group.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"
#include "threads.h"
#include "vec.h"

namespace ra::cpu {

namespace {
constexpr int BR = 32;
constexpr int BC = 64;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

struct Ptrs {  // one (batch, q head) view of the forward's arrays
  const float *q, *k, *v, *dout, *lse, *delta;
  const int32_t *doc_q, *doc_k;  // null without documents
};

Ptrs at(const AttnBwdParams& p, int b, int h) {
  const AttnParams& f = p.fwd;
  const int D = f.head_dim, kh = h / (f.heads / f.kv_heads);
  const int64_t lse_off = b * f.lse_batch_stride + h * f.lse_head_stride;
  return {f.q + b * f.q_batch_stride + int64_t(h) * D, f.k + b * f.k_batch_stride + int64_t(kh) * D,
          f.v + b * f.k_batch_stride + int64_t(kh) * D, p.dout + b * f.o_batch_stride + int64_t(h) * D,
          f.lse + lse_off, p.delta + lse_off,
          f.doc_q ? f.doc_q + b * f.doc_q_batch_stride : nullptr, f.doc_k ? f.doc_k + b * f.doc_k_batch_stride : nullptr};
}
}  // namespace

void attention_delta(const AttnParams& p, const float* dout, float* delta) {
  parallel_for(int64_t(p.batch) * p.heads, [&](int64_t item) {
    const int h = int(item % p.heads), b = int(item / p.heads);
    const int64_t base = b * p.o_batch_stride + int64_t(h) * p.head_dim;
    float* dl = delta + b * p.lse_batch_stride + h * p.lse_head_stride;
    for (int i = 0; i < p.seq_q; ++i)
      dl[i] = dot(dout + base + i * p.o_row_stride, p.out + base + i * p.o_row_stride, p.head_dim);
  });
}

namespace {
// Pass 1's work item: dq[i] += scale * sum_j p_ij (dout_i.v_j - delta_i) k_j for query rows
// [BR qb, BR qb + BR) of one (batch, head).
[[gnu::always_inline]] inline void dq_item(const AttnBwdParams& p, int64_t item) {
  const AttnParams& f = p.fwd;
  const int D = f.head_dim;
  const int64_t qblocks = (f.seq_q + BR - 1) / BR;
  const int qb = int(item % qblocks), h = int(item / qblocks % f.heads), b = int(item / qblocks / f.heads);
  const Ptrs x = at(p, b, h);
  float* dq = p.dq + b * f.q_batch_stride + int64_t(h) * D;
  const int i0 = qb * BR, i1 = std::min(f.seq_q, i0 + BR);
  for (int i = i0; i < i1; ++i) {
    if (x.lse[i] == NEG_INF) continue;  // the row saw no key: no gradient flows
    const float* qi = x.q + i * f.q_row_stride;
    const float* doi = x.dout + i * f.o_row_stride;
    float* dqi = dq + i * f.q_row_stride;
    const int64_t jend = f.causal ? std::min<int64_t>(f.seq_k, i + f.causal_offset + 1) : f.seq_k;
    for (int64_t j = 0; j < jend; ++j) {
      if (x.doc_q && x.doc_k[j] != x.doc_q[i]) continue;  // another document
      const float pij = std::exp(dot(qi, x.k + j * f.k_row_stride, D) * f.scale - x.lse[i]);
      if (pij == 0.f) continue;
      const float ds = pij * (dot(doi, x.v + j * f.k_row_stride, D) - x.delta[i]);
      axpy(f.scale * ds, x.k + j * f.k_row_stride, dqi, D);
    }
  }
}

// Pass 2's work item: dv[j] += sum_i p_ij dout_i; dk[j] += scale * sum_i ds_ij q_i for keys
// [BC kb, BC kb + BC) of one (batch, kv head), over the query heads of its group.
[[gnu::always_inline]] inline void dkdv_item(const AttnBwdParams& p, int64_t item) {
  const AttnParams& f = p.fwd;
  const int D = f.head_dim;
  const int group = f.heads / f.kv_heads;
  const int64_t kblocks = (f.seq_k + BC - 1) / BC;
  const int kb = int(item % kblocks), kh = int(item / kblocks % f.kv_heads), b = int(item / kblocks / f.kv_heads);
  const int j0 = kb * BC, cols = std::min(BC, f.seq_k - j0);
  std::vector<float> dk(size_t(cols) * D, 0.f), dv(size_t(cols) * D, 0.f);
  // Queries before this tile's first visible row are skipped, not masked.
  const int64_t istart = f.causal ? std::clamp<int64_t>(j0 - f.causal_offset, 0, f.seq_q) : 0;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const Ptrs x = at(p, b, h);
    for (int64_t i = istart; i < f.seq_q; ++i) {
      if (x.lse[i] == NEG_INF) continue;
      const float* qi = x.q + i * f.q_row_stride;
      const float* doi = x.dout + i * f.o_row_stride;
      const int cend = f.causal ? int(std::min<int64_t>(cols, i + f.causal_offset - j0 + 1)) : cols;
      for (int c = 0; c < cend; ++c) {
        const int64_t j = j0 + c;
        if (x.doc_q && x.doc_k[j] != x.doc_q[i]) continue;
        const float pij = std::exp(dot(qi, x.k + j * f.k_row_stride, D) * f.scale - x.lse[i]);
        if (pij == 0.f) continue;
        const float ds = pij * (dot(doi, x.v + j * f.k_row_stride, D) - x.delta[i]);
        axpy(pij, doi, &dv[size_t(c) * D], D);
        axpy(f.scale * ds, qi, &dk[size_t(c) * D], D);
      }
    }
  }
  float* dkb = p.dk + b * f.k_batch_stride + int64_t(kh) * D;
  float* dvb = p.dv + b * f.k_batch_stride + int64_t(kh) * D;
  for (int c = 0; c < cols; ++c) {
    axpy(1.f, &dk[size_t(c) * D], dkb + (j0 + c) * f.k_row_stride, D);
    axpy(1.f, &dv[size_t(c) * D], dvb + (j0 + c) * f.k_row_stride, D);
  }
}
}  // namespace

void attention_backward(const AttnBwdParams& p) {
  const AttnParams& f = p.fwd;
  parallel_items<dq_item>(int64_t(f.batch) * f.heads * ((f.seq_q + BR - 1) / BR), p);
  parallel_items<dkdv_item>(int64_t(f.batch) * f.kv_heads * ((f.seq_k + BC - 1) / BC), p);
}

}  // namespace ra::cpu
