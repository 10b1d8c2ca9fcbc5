// Ring attention over a group: each rank keeps its query shard while K/V shards travel
// rank -> rank+1, and the partial results merge through the log-sum-exp. All buffers are
// float32, contiguous [batch, seq_local, heads, dim]; lse is [batch, heads, seq_local].
#pragma once
#include "transport.h"

namespace ra::ring {

// Which parts of the ring schedule run. Only benchmarks ask for one part alone, to time a
// step's compute and its transfers apart; the results of a part alone are meaningless.
enum class Parts { Both = 0, ComputeOnly = 1, TransfersOnly = 2 };

// How long one ring step took on this rank (benchmarks): its compute (the attention kernel; 0
// when the step computes nothing), its transfers (those posted at this step: on the CPU and
// over NCCL waiting for the peer included, between in-process GPU ranks the copies alone), and
// the step as a whole (from its compute's start to the next step's; the last step's ends with
// the loop). Transfers hide when whole ~ compute, not compute + transfers.
struct StepTime {
  double compute_ms = 0, transfer_ms = 0, whole_ms = 0;
};

struct RingShape {
  int batch, seq, heads, kv_heads, head_dim;  // seq: this rank's shard length
  float scale;
  bool causal;
  bool zigzag;  // shard = chunks (r, 2N-1-r) of 2N; else contiguous chunk r of N
  Parts parts = Parts::Both;
  std::vector<StepTime>* step_times = nullptr;  // benchmarks: filled with one entry per step
  bool deterministic = false;  // backward on CUDA: dQ without atomics (the CPU always is)
  // Packed sequences: the document of each token of this rank's shard ([batch, seq], host
  // memory), or null. They travel with the K/V block, so that a query sees only its document.
  const int32_t* docs = nullptr;
  // Tests only: this rank throws at this step, after posting its transfer, as a failure in the
  // middle of a call would (peers then wait on it); -1 for none. Not compared across ranks.
  int fail_at_step = -1;
  bool computes() const { return parts != Parts::TransfersOnly; }
  bool moves() const { return parts != Parts::ComputeOnly; }
  void fail_if_asked(int step) const {
    if (step == fail_at_step)
      throw UserError("Error", "ring step " + std::to_string(step) + " failed as asked (failAtStep, a test)");
  }
};

// The part of the block that started on rank `src` which rank `rank` computes with: query
// rows [q_off, q_off + q_len) against key rows [k_off, k_off + k_len) of the local shards.
struct Plan {
  bool skip = false;
  int q_off = 0, q_len = 0, k_off = 0, k_len = 0;
  bool causal = false;
};
Plan plan(const RingShape& s, int rank, int src);

void ring_forward(Transport& t, const RingShape& s, const float* q, const float* k, const float* v, float* out,
                  float* lse);
void ring_backward(Transport& t, const RingShape& s, const float* dout, const float* q, const float* k,
                   const float* v, const float* out, const float* lse, float* dq, float* dk, float* dv);

}  // namespace ra::ring
