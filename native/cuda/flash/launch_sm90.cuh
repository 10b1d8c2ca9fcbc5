// Launch template of the Hopper forward (fwd_sm90_kernel.cuh), apart from launch.cuh so that
// its instantiations do not compile the other kernels too.
#pragma once
#include "../check.h"
#include "fwd_sm90_kernel.cuh"
#include "launch.h"

namespace ra::cuda::flash {

template <typename T, int kHeadDim, bool kCausal>
void run_fwd_sm90(const FwdParams& p, cudaStream_t stream) {
  using Tr = Sm90FwdTraits<kHeadDim, T>;
  auto kernel = fwd_sm90_kernel<Tr, kCausal>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes), "cudaFuncSetAttribute");
  const dim3 grid((p.seq_q + Tr::kBlockM - 1) / Tr::kBlockM, p.heads, p.batch);
  kernel<<<grid, Tr::kNThreads, Tr::kSmemBytes, stream>>>(p);
  check(cudaGetLastError(), "attention forward (sm_90) launch");
}

}  // namespace ra::cuda::flash
