// Ring attention on CUDA tensors, between ranks that are threads of this process (launch()
// groups: virtual ranks sharing a GPU, or one GPU each) or processes in an NCCL group. Same schedule and plan as the CPU
// ring (ring/ring_attention.cpp); tensors are contiguous [batch, seq_local, heads, dim] of
// dtype bfloat16/float16, lse float32 [batch, heads, seq_local]. Results are ordered before
// later work on the default stream; the host does not wait for the GPU, except that over NCCL
// the call returns once its transfers are done (polled against the group's timeout).
#pragma once
#include "../common.h"
#include "../ring/ring_attention.h"

namespace ra::cuda {

void ring_forward(ring::LocalTransport& t, const ring::RingShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                  Tensor& out, Tensor& lse);
void ring_backward(ring::LocalTransport& t, const ring::RingShape& s, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk,
                   Tensor& dv);
void ring_forward_nccl(int64_t group, const ring::RingShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       Tensor& out, Tensor& lse);
void ring_backward_nccl(int64_t group, const ring::RingShape& s, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv);

}  // namespace ra::cuda
