// The parts of a forward kernel that do not depend on how S and P V are multiplied: masking a
// tile of scores, the online softmax step, and the epilogue that writes (out, lse) or merges
// them into a ring step's running result. Each lane holds two query rows (row0 and row0 + 8)
// in the m16n8 accumulator layout (mma.cuh): s[nt][2r + e] is row row0 + 8r, column
// 8nt + 2t + e of the tile. Shared by fwd_kernel.cuh (mma.sync) and fwd_sm90_kernel.cuh (wgmma).
#pragma once
#include <cmath>

#include "flash.h"
#include "mma.cuh"

namespace ra::cuda::flash {

// Scores past the keys, above the causal diagonal or across documents (doc_k set: the keys'
// ids; doc_row: this lane's rows') become -inf.
template <bool kCausal, int kNT>
__device__ __forceinline__ void mask_scores(float (&s)[kNT][4], const FwdParams& p, int n0, int row0, int t,
                                            const int* doc_k, const int* doc_row) {
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = n0 + nt * 8 + 2 * t + (e & 1);
      const int64_t row = row0 + (e >> 1) * 8;
      if (col >= p.seq_k || (kCausal && col > row + p.causal_offset) || (doc_k && doc_k[col] != doc_row[e >> 1]))
        s[nt][e] = -INFINITY;
    }
}

// Online softmax: s becomes exp(s - running max) (P, unnormalised), the running sum is
// rescaled to the new max, and corr is the factor that rescales the output accumulator to it
// (rescale_output). A row that has seen no key yet keeps max -inf; using 0 in its place makes
// every exp2 of -inf exactly 0 instead of NaN (field notes: fully masked rows). The two are
// apart so that the Hopper forward can exponentiate one tile while the product of the last
// one into the accumulator is still in flight.
template <int kNT>
__device__ __forceinline__ void softmax_scores(float (&s)[kNT][4], float (&row_max)[2], float (&row_sum)[2],
                                               float scale_log2, float (&corr)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = row_max[r];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    mx = quad_max(mx);
    const float ms = mx == -INFINITY ? 0.f : mx * scale_log2;
    corr[r] = exp2f(row_max[r] * scale_log2 - ms);
    row_max[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      s[nt][2 * r] = exp2f(s[nt][2 * r] * scale_log2 - ms);
      s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] * scale_log2 - ms);
      sum += s[nt][2 * r] + s[nt][2 * r + 1];
    }
    row_sum[r] = row_sum[r] * corr[r] + sum;  // per lane; the quad's partial sums add up at the end
  }
}
template <int kDT>
__device__ __forceinline__ void rescale_output(float (&acc)[kDT][4], const float (&corr)[2]) {
#pragma unroll
  for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dt][e] *= corr[e >> 1];
}
template <int kNT, int kDT>
__device__ __forceinline__ void online_softmax(float (&s)[kNT][4], float (&acc)[kDT][4], float (&row_max)[2],
                                               float (&row_sum)[2], float scale_log2) {
  float corr[2];
  softmax_scores(s, row_max, row_sum, scale_log2, corr);
  rescale_output(acc, corr);
}

// Epilogue. Without out_accum, out = acc / sum and lse. With out_accum (a ring step), merge
// (out, lse) into the running float32 result through the log-sum-exp; every lane of a quad
// reads the old lse before lane 0 rewrites it.
template <typename T, int kDT>
__device__ __forceinline__ void store_forward(const FwdParams& p, int b, int h, int row0, int t,
                                              const float (&acc)[kDT][4], const float (&row_max)[2],
                                              const float (&row_sum)[2]) {
  float l[2], lse_old[2] = {-INFINITY, -INFINITY};
  float* lse_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    l[r] = quad_sum(row_sum[r]);
    lse_row[r] = p.lse + b * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + row;
    if (p.out_accum != nullptr && row < p.seq_q) lse_old[r] = *lse_row[r];
  }
  __syncwarp();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= p.seq_q) continue;
    // l is 0 only for a row that saw no key; a NaN score (fmaxf drops it from the max, not from
    // the sum) makes l NaN, which must reach out and lse rather than pass for such a row.
    const float lse_new = l[r] != 0.f ? row_max[r] * p.scale + logf(l[r]) : -INFINITY;
    const float inv = l[r] != 0.f ? 1.f / l[r] : 0.f;
    if (p.out_accum == nullptr) {
      T* o = static_cast<T*>(p.out) + b * p.o_batch_stride + int64_t(row) * p.o_row_stride + int64_t(h) * p.head_dim;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const int col = dt * 8 + 2 * t;
        if (col < p.head_dim) store2(o + col, acc[dt][2 * r] * inv, acc[dt][2 * r + 1] * inv, col + 1 < p.head_dim);
      }
      if (t == 0) *lse_row[r] = lse_new;
    } else {
      if (lse_new == -INFINITY) continue;  // this block adds nothing to the row
      const float mx = fmaxf(lse_old[r], lse_new);
      const float lse = mx + logf(expf(lse_old[r] - mx) + expf(lse_new - mx));
      const float wa = lse_old[r] == -INFINITY ? 0.f : expf(lse_old[r] - lse), wb = expf(lse_new - lse) * inv;
      float* o = p.out_accum + b * p.o_batch_stride + int64_t(row) * p.o_row_stride + int64_t(h) * p.head_dim;
#pragma unroll
      for (int dt = 0; dt < kDT; ++dt) {
        const int col = dt * 8 + 2 * t;
        if (col < p.head_dim) o[col] = (wa == 0.f ? 0.f : wa * o[col]) + wb * acc[dt][2 * r];
        if (col + 1 < p.head_dim) o[col + 1] = (wa == 0.f ? 0.f : wa * o[col + 1]) + wb * acc[dt][2 * r + 1];
      }
      if (t == 0) *lse_row[r] = lse;
    }
  }
}

}  // namespace ra::cuda::flash
