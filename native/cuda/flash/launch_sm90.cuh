// Launch templates of the Hopper kernels (fwd_sm90_kernel.cuh, bwd_sm90_kernel.cuh).
#pragma once
#include <cstdlib>
#include <cstring>

#include "../check.h"
#include "bwd_sm90_kernel.cuh"
#include "fwd_sm90_kernel.cuh"
#include "launch.cuh"

namespace ra::cuda::flash {

template <typename T, int kHeadDim, bool kCausal>
void run_fwd_sm90(const FwdParams& p, cudaStream_t stream) {
  using Tr = Sm90FwdTraits<kHeadDim, T>;
  auto kernel = fwd_sm90_kernel<Tr, kCausal>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes), "cudaFuncSetAttribute");
  const dim3 grid((p.seq_q + Tr::kBlockM - 1) / Tr::kBlockM, p.heads, p.batch);
  const Sm90FwdMaps maps = sm90_fwd_maps<Tr>(p);
  // On unless RING_ATTENTION_SM90_PINGPONG=0 (fwd_sm90_kernel.cuh), read per launch as
  // RING_ATTENTION_SM90 is, so that a benchmark can time both.
  const char* pingpong = std::getenv("RING_ATTENTION_SM90_PINGPONG");
  kernel<<<grid, Tr::kNThreads, Tr::kSmemBytes, stream>>>(p, maps, pingpong == nullptr || std::strcmp(pingpong, "0") != 0);
  check(cudaGetLastError(), "attention forward (sm_90) launch");
}

template <typename T, int kHeadDim, bool kCausal>
void run_bwd_sm90(const BwdParams& p, cudaStream_t stream) {
  using Tr = Sm90BwdTraits<kHeadDim, T>;
  auto kernel = bwd_sm90_kernel<Tr, kCausal>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes), "cudaFuncSetAttribute");
  const dim3 grid((p.fwd.seq_k + Tr::kBlockN - 1) / Tr::kBlockN, p.fwd.kv_heads, p.fwd.batch);
  const Sm90BwdMaps maps = sm90_bwd_maps<Tr>(p);
  kernel<<<grid, Tr::kNThreads, Tr::kSmemBytes, stream>>>(p, maps, !p.deterministic);
  check(cudaGetLastError(), "attention backward (sm_90) launch");
  if (p.deterministic) run_bwd_dq<T, kHeadDim, kCausal>(p, stream);
}

}  // namespace ra::cuda::flash
