// Which tiles a kernel visits: the causal limits, and for packed sequences, tiles that share
// no document are skipped, not masked element by element.
// Each kDocSpan tokens of an id array have a span (their smallest and largest id); two tiles
// whose ranges do not meet share no document whatever the ids are, so skipping them is exact.
// Documents laid end to end (the usual packing) make the ranges tight, so a packed step costs
// what its documents cost rather than what one sequence of the whole length would.
#pragma once
#include <climits>

#include "flash.h"

namespace ra::cuda::flash {

// Causal: the key tiles (kBN keys each) that queries [m0, m0 + kBM) may see are [0, this).
template <bool kCausal>
__device__ __forceinline__ int key_tiles_seen(const FwdParams& p, int m0, int kBM, int kBN) {
  int64_t end = p.seq_k;
  if (kCausal) end = max(int64_t(0), min(end, int64_t(m0) + kBM + p.causal_offset));
  return int((end + kBN - 1) / kBN);
}

// Whether the tile of queries from m0 and keys [n0, n0 + kBN) needs its mask tested element by
// element: the ragged last key tile, a tile crossing the causal diagonal, or a tile of several
// documents (`mixed`). The others, most of a long sequence, skip those tests (rows past seq_q
// need none: the forward never stores them, the backward gives them lse +inf).
template <bool kCausal>
__device__ __forceinline__ bool tile_needs_mask(const FwdParams& p, int m0, int n0, int kBN, bool mixed) {
  return n0 + kBN > p.seq_k || (kCausal && int64_t(n0) + kBN - 1 > int64_t(m0) + p.causal_offset) || mixed;
}

// Causal: the first query tile (kBM queries each, m_blocks of them) with a query that sees
// key n0; the tiles before it see none of keys n0 on.
template <bool kCausal>
__device__ __forceinline__ int first_query_tile(const FwdParams& p, int n0, int kBM, int m_blocks) {
  if (!kCausal) return 0;
  const int64_t first = int64_t(n0) - p.causal_offset;
  return first <= 0 ? 0 : int(min(first / kBM, int64_t(m_blocks)));
}

// Packed sequences: the ids of this lane's two rows, row0 and row0 + 8 (of n), read from
// `ids` (batch row b); zeros past n or without ids.
__device__ __forceinline__ void lane_documents(const int* ids, int64_t batch_stride, int b, int row0, int n,
                                               int (&out)[2]) {
  for (int r = 0; r < 2; ++r) out[r] = ids && row0 + 8 * r < n ? ids[b * batch_stride + row0 + 8 * r] : 0;
}

struct DocRange {
  int lo, hi;
};
__device__ __forceinline__ bool meets(DocRange a, DocRange b) { return a.lo <= b.hi && b.lo <= a.hi; }

// One batch row's spans, and where row 0 of the kernel's view sits in the spanned array.
struct DocSide {
  const int* spans;
  int shift;
};
__device__ __forceinline__ DocSide doc_side(const int* spans, int64_t doc_batch_stride, int shift, int b) {
  return {spans + b * 2 * ((doc_batch_stride + kDocSpan - 1) / kDocSpan), shift};
}

// The id range of rows [first, first + n) (n >= 1), widened to whole spans: never narrower.
__device__ __forceinline__ DocRange doc_range(const DocSide& d, int first, int n) {
  DocRange r{INT_MAX, INT_MIN};
  for (int s = (first + d.shift) / kDocSpan; s <= (first + n - 1 + d.shift) / kDocSpan; ++s)
    r = {min(r.lo, d.spans[2 * s]), max(r.hi, d.spans[2 * s + 1])};
  return r;
}

// Whether queries [q0, q0 + nq) and keys [k0, k0 + nk) (both n >= 1) of batch row b may hold
// more than one document between them: if not, they need no mask element by element.
__device__ __forceinline__ bool mixed_documents(const FwdParams& p, int b, int q0, int nq, int k0, int nk) {
  const DocRange q = doc_range(doc_side(p.doc_q_spans, p.doc_q_batch_stride, p.doc_q_shift, b), q0, nq);
  const DocRange k = doc_range(doc_side(p.doc_k_spans, p.doc_k_batch_stride, p.doc_k_shift, b), k0, nk);
  return !(q.lo == q.hi && k.lo == k.hi && q.lo == k.lo);
}

// The first tile in [from, end) of `tile` rows (of `len`) that may share a document with
// `mine`, or end. The warp tests 32 tiles per round, so a run of hidden tiles costs little.
// Every lane of the warp must call it, with the same arguments; every warp gets the same answer.
__device__ __forceinline__ int next_meeting_tile(const DocSide& d, DocRange mine, int from, int end, int tile,
                                                 int len) {
  for (int base = from; base < end; base += 32) {
    const int nb = base + int(threadIdx.x % 32);
    const bool hit = nb < end && meets(mine, doc_range(d, nb * tile, min(tile, len - nb * tile)));
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (ballot != 0) return base + __ffs(int(ballot)) - 1;
  }
  return end;
}

// For a kernel that loops over key tiles (over_keys) with its query rows [row0, row0 + n)
// fixed, or over query tiles with its keys fixed: the next tile from `from` on (of `tile` rows,
// before `end`) that may share a document with the fixed rows; `from` itself without ids. The
// ranges are re-read on each call (kernel parameters, cached loads), so no register holds them.
__device__ __forceinline__ int next_tile_with_documents(const FwdParams& p, int b, bool over_keys, int row0, int n,
                                                        int from, int end, int tile) {
  if (!p.doc_q) return from;
  const DocSide q = doc_side(p.doc_q_spans, p.doc_q_batch_stride, p.doc_q_shift, b);
  const DocSide k = doc_side(p.doc_k_spans, p.doc_k_batch_stride, p.doc_k_shift, b);
  return next_meeting_tile(over_keys ? k : q, doc_range(over_keys ? q : k, row0, n), from, end, tile,
                           over_keys ? p.seq_k : p.seq_q);
}

}  // namespace ra::cuda::flash
