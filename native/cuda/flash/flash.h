// The flash-attention kernels' parameters and the entry points that pick an instantiation.
// Plain structs of pointers, strides and sizes (as in flash-attention's csrc), so that a
// ring step can point a kernel at a slice of the sequence without copying it. No CUDA
// types here: the N-API layer and the ring loop include this header from plain C++.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../../common.h"

namespace ra::cuda::flash {

// Layout [batch, seq, heads, head_dim]; heads are contiguous within a row, so a row stride
// and a batch stride (in elements) locate any (b, i, h). lse is [batch, heads, seq_q].
struct FwdParams {
  const void* q;             // dtype T, q strides
  const void* k;             // dtype T, k strides, kv_heads heads
  const void* v;             // dtype T, v strides
  void* out;                 // dtype T, o strides; written when out_accum is null
  float* out_accum;          // float32, o strides; when set, the result merges into it (ring steps)
  float* lse;                // natural-log log-sum-exp; read and updated when out_accum is set
  int64_t q_batch_stride, q_row_stride;
  int64_t k_batch_stride, k_row_stride;
  int64_t v_batch_stride, v_row_stride;
  int64_t o_batch_stride, o_row_stride;
  int64_t lse_batch_stride, lse_head_stride;
  int batch, heads, kv_heads, head_dim, seq_q, seq_k;
  float scale;
  int64_t causal_offset;     // query i sees key j when j <= i + causal_offset
  bool vec_ok;               // every row start is 16-byte aligned: tiles load with cp.async
  // Packed sequences: when set (device int32, [batch, seq] at their batch strides), query i
  // sees key j only if doc_q[i] == doc_k[j], besides the causal rule.
  const int* doc_q;
  const int* doc_k;
  int64_t doc_q_batch_stride, doc_k_batch_stride;
  // Required with doc_q/doc_k: the spans (document_spans) of the id arrays they point into,
  // whose row `shift` they start at. Tiles whose id ranges do not meet are skipped.
  const int* doc_q_spans;
  const int* doc_k_spans;
  int doc_q_shift, doc_k_shift;
};

struct BwdParams {
  FwdParams fwd;             // q, k, v and the final lse of the forward (out/out_accum unused)
  const void* dout;          // dtype T, o strides
  const float* delta;        // rowsum(dout * out), lse strides
  float* dq_accum;           // float32, dq strides, accumulated (+=), already scaled
  float* dk_accum;           // float32, dk strides, accumulated (+=), summed over a GQA group
  float* dv_accum;           // float32, dk strides, accumulated (+=)
  bool dkv_overwrite;        // dK/dV written (=) instead: no zeroing pass (the ring's per-step buffer)
  int64_t dq_batch_stride, dq_row_stride;
  int64_t dk_batch_stride, dk_row_stride;
  bool deterministic;        // dQ in its own pass instead of atomics: same bits on every run
};

// Every head's run of dq_accum in every row starts 16-byte aligned: what vector atomics and
// bulk reductions into dQ need.
inline bool dq_rows_aligned(const BwdParams& p) {
  return reinterpret_cast<uintptr_t>(p.dq_accum) % 16 == 0 && p.dq_row_stride % 4 == 0 && p.dq_batch_stride % 4 == 0 &&
         p.fwd.head_dim % 4 == 0;
}

// Largest head dim the kernels are compiled for; head dims in between round up to the next
// instantiation (64, 128, 256) with the extra columns zero-filled on chip.
constexpr int kMaxHeadDim = 256;

// Packed sequences: each kDocSpan tokens of a [batch, seq] id array have a span, their
// smallest and largest id, so that a kernel can tell tiles that share no document apart
// without reading every id. doc_span_ints: the ints the spans of one array take.
constexpr int kDocSpan = 64;
inline size_t doc_span_ints(int batch, int64_t seq) { return size_t(batch) * 2 * size_t((seq + kDocSpan - 1) / kDocSpan); }

// Enqueue on `stream` (a cudaStream_t); nothing here synchronises with the host.
void forward(const FwdParams& p, DType dtype, bool causal, void* stream);
// spans[b][2s], spans[b][2s + 1]: the smallest and largest of ids[b][kDocSpan s ...] (device).
void document_spans(const int* ids, int batch, int seq, int* spans, void* stream);
// delta must already hold rowsum(dout * out) (see compute_delta).
void backward(const BwdParams& p, DType dtype, bool causal, void* stream);
// delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d]; out and dout use o strides of p.
void compute_delta(const FwdParams& p, const void* out, const void* dout, float* delta, DType dtype, void* stream);

}  // namespace ra::cuda::flash
