// Launch templates: grid shapes, the shared-memory opt-in above 48 KiB, launch checks.
#pragma once
#include "../check.h"
#include "bwd_kernel.cuh"
#include "fwd_kernel.cuh"
#include "launch.h"

namespace ra::cuda::flash {

template <typename Kernel>
void allow_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), "cudaFuncSetAttribute");
}

template <typename T, int kHeadDim, bool kCausal>
void run_fwd(const FwdParams& p, cudaStream_t stream) {
  using Tr = FwdTraitsFor<kHeadDim, T>;
  auto kernel = fwd_kernel<Tr, kCausal>;
  allow_smem(kernel, Tr::kSmemBytes);
  const dim3 grid((p.seq_q + Tr::kBlockM - 1) / Tr::kBlockM, p.heads, p.batch);
  kernel<<<grid, Tr::kNThreads, Tr::kSmemBytes, stream>>>(p);
  check(cudaGetLastError(), "attention forward launch");
}

template <typename T, int kHeadDim, bool kCausal>
void run_bwd_dq(const BwdParams& p, cudaStream_t stream);

template <typename T, int kHeadDim, bool kCausal>
void run_bwd(const BwdParams& p, cudaStream_t stream) {
  using Tr = BwdTraitsFor<kHeadDim, T>;
  auto dkdv = bwd_dkdv_kernel<Tr, kCausal>;
  allow_smem(dkdv, Tr::kSmemBytes);
  const dim3 grid_k((p.fwd.seq_k + Tr::kBlockN - 1) / Tr::kBlockN, p.fwd.kv_heads, p.fwd.batch);
  const bool vec4 = !p.deterministic && dq_vec4(p);
  for (int col = 0; col < p.fwd.head_dim; col += Tr::kDAcc) {
    dkdv<<<grid_k, Tr::kNThreads, Tr::kSmemBytes, stream>>>(p, col, !p.deterministic && col == 0, vec4);
    check(cudaGetLastError(), "attention backward (dK/dV) launch");
  }
  if (p.deterministic) run_bwd_dq<T, kHeadDim, kCausal>(p, stream);
}

// Deterministic dQ, a kernel of its own (after either dK/dV kernel).
template <typename T, int kHeadDim, bool kCausal>
void run_bwd_dq(const BwdParams& p, cudaStream_t stream) {
  using Tr = BwdTraitsFor<kHeadDim, T>;
  auto dq = bwd_dq_kernel<Tr, kCausal>;
  const int smem = (2 * Tr::kBlockM + 2 * Tr::kBlockN) * Tr::kStride * int(sizeof(T));
  allow_smem(dq, smem);
  const dim3 grid_q((p.fwd.seq_q + Tr::kBlockM - 1) / Tr::kBlockM, p.fwd.heads, p.fwd.batch);
  dq<<<grid_q, Tr::kNThreads, smem, stream>>>(p);
  check(cudaGetLastError(), "attention backward (dQ) launch");
}

}  // namespace ra::cuda::flash
