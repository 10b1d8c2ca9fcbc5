// Attention on whole CUDA tensors, [batch, seq, heads, head_dim], bfloat16 or float16:
// what attention()/attentionBackward() call for 'cuda' tensors. The work is enqueued on the
// default stream; results are ready for any later kernel or copy without a host wait.
#pragma once
#include "../common.h"

namespace ra::cuda {

struct AttnOut {
  Tensor out;  // dtype of q
  Tensor lse;  // float32 [batch, heads, seq_q]
};
struct AttnGrads {
  Tensor dq, dk, dv;
};

// docs: null, or the host document id of each token ([batch, seq]; seq_q == seq_k), uploaded here.
AttnOut attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale,
                          const int32_t* docs = nullptr);
AttnGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, bool causal, float scale, bool deterministic, const int32_t* docs = nullptr);

// Attention forward and backward calls in this process whose kernels were launched (a backward
// launches several: it counts once), and those that ran the Hopper kernels, so that tests can
// tell which ran: RING_ATTENTION_SM90=1 falls back to the default kernels where the Hopper ones
// cannot run (a head dim other than 64 or 128, rows TMA cannot describe).
struct KernelLaunches {
  uint64_t forward = 0, backward = 0, hopper_forward = 0, hopper_backward = 0;
};
KernelLaunches kernel_launches();

}  // namespace ra::cuda
