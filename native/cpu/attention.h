// Blockwise (flash-style) attention on the CPU, float32, layout [batch, seq, heads, dim].
// The params carry strides so that a ring step can run on a slice of the sequence (the
// zigzag halves) without copying it.
#pragma once
#include <cstdint>

namespace ra::cpu {

struct AttnParams {
  const float* q;          // [batch, seq_q, heads, head_dim] at q_batch_stride, q_row_stride
  const float* k;          // [batch, seq_k, kv_heads, head_dim] at k_batch_stride, k_row_stride
  const float* v;          // same strides as k
  float* out;              // like q, at o_batch_stride, o_row_stride
  float* lse;              // [batch, heads, seq_q] at lse_batch_stride, lse_head_stride; natural log
  int64_t q_batch_stride, q_row_stride;
  int64_t k_batch_stride, k_row_stride;
  int64_t o_batch_stride, o_row_stride;
  int64_t lse_batch_stride, lse_head_stride;
  int batch, heads, kv_heads, head_dim, seq_q, seq_k;
  float scale;
  bool causal;
  int64_t causal_offset;   // query i sees key j when j <= i + causal_offset (seq_k - seq_q: bottom right)
  // When set, (out, lse) already hold a normalised partial result over other keys, and
  // this call merges into it through the log-sum-exp; lse = -inf means "nothing yet".
  bool accumulate;
  // Packed sequences: when set, query i sees key j only if doc_q[i] == doc_k[j] (besides the
  // causal rule). [batch, seq_q] and [batch, seq_k] at their batch strides.
  const int32_t* doc_q = nullptr;
  const int32_t* doc_k = nullptr;
  int64_t doc_q_batch_stride = 0, doc_k_batch_stride = 0;
};

struct AttnBwdParams {
  AttnParams fwd;          // q, k, v, out and lse of the forward; out/lse are the final ones
  const float* dout;       // strides of out
  const float* delta;      // rowsum(dout * out), strides of lse
  float* dq;               // strides of q; accumulated (+=)
  float* dk;               // strides of k; accumulated (+=), summed over a GQA group's q heads
  float* dv;               // strides of k; accumulated (+=)
};

void attention_forward(const AttnParams& p);
void attention_backward(const AttnBwdParams& p);
// delta[b, h, i] = sum_d dout[b, i, h, d] * out[b, i, h, d], written with p.fwd's lse strides.
void attention_delta(const AttnParams& p, const float* dout, float* delta);

}  // namespace ra::cpu
