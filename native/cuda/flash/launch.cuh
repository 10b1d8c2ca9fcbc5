// Launch templates: grid shapes, the shared-memory opt-in above 48 KiB, launch checks.
#pragma once
#include <atomic>
#include <cstdlib>
#include <cstring>

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

// Whether a backward kernel uses its second buffer (`prefetch`: bwd_kernel.cuh): where it fits
// the current device and leaves it as many blocks per SM as without it, as the occupancy
// calculator counts them (e.g. an A100's 164 KiB of shared memory per SM holds two
// head-dim-128 dK/dV blocks without it, one with). Where it does not, the loads wait instead.
// Also raises the kernel's shared-memory limit, always to the same size for a device (the
// larger that fits), so that ranks' threads launching it at once never lower it under each
// other. Asked once per device and kernel (`known`, a static of each instantiation: 2 fits and
// keeps the blocks, 1 fits only, -1 does not fit). RING_ATTENTION_BWD_PREFETCH=0 never uses
// it, =1 wherever it fits (to measure what it gains).
template <typename Kernel>
bool use_prefetch(Kernel kernel, int threads, int plain_bytes, int prefetch_bytes,
                  std::atomic<signed char> (&known)[kMaxDevices]) {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  std::atomic<signed char>* slot = dev < kMaxDevices ? &known[dev] : nullptr;
  signed char state = slot ? slot->load() : 0;
  if (state == 0) {
    int optin = 0, with = 0, without = 0;
    check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    const bool fits = prefetch_bytes <= optin;
    allow_smem(kernel, fits ? prefetch_bytes : plain_bytes);
    if (fits) check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&with, kernel, threads, prefetch_bytes), "cudaOccupancy");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&without, kernel, threads, plain_bytes), "cudaOccupancy");
    state = !fits ? -1 : with >= without ? 2 : 1;
    if (slot) *slot = state;
  }
  const char* opt = std::getenv("RING_ATTENTION_BWD_PREFETCH");
  if (opt && std::strcmp(opt, "0") == 0) return false;
  if (opt && std::strcmp(opt, "1") == 0) return state > 0;
  return state == 2;
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
  static std::atomic<signed char> known[kMaxDevices];
  const bool prefetch = use_prefetch(dkdv, Tr::kNThreads, Tr::kPlainSmemBytes, Tr::kSmemBytes, known);
  const int smem = prefetch ? Tr::kSmemBytes : Tr::kPlainSmemBytes;  // within the limit the call above set
  const dim3 grid_k((p.fwd.seq_k + Tr::kBlockN - 1) / Tr::kBlockN, p.fwd.kv_heads, p.fwd.batch);
  const bool vec4 = !p.deterministic && dq_vec4(p);
  for (int col = 0; col < p.fwd.head_dim; col += Tr::kDAcc) {
    dkdv<<<grid_k, Tr::kNThreads, smem, stream>>>(p, col, !p.deterministic && col == 0, vec4, prefetch);
    check(cudaGetLastError(), "attention backward (dK/dV) launch");
  }
  if (p.deterministic) run_bwd_dq<T, kHeadDim, kCausal>(p, stream);
}

// Deterministic dQ, a kernel of its own (after either dK/dV kernel).
template <typename T, int kHeadDim, bool kCausal>
void run_bwd_dq(const BwdParams& p, cudaStream_t stream) {
  using Tr = BwdTraitsFor<kHeadDim, T>;
  auto dq = bwd_dq_kernel<Tr, kCausal>;
  static std::atomic<signed char> known[kMaxDevices];
  const bool prefetch = use_prefetch(dq, Tr::kNThreads, Tr::kDqPlainSmemBytes, Tr::kDqSmemBytes, known);
  const int smem = prefetch ? Tr::kDqSmemBytes : Tr::kDqPlainSmemBytes;  // within the limit the call above set
  const dim3 grid_q((p.fwd.seq_q + Tr::kBlockM - 1) / Tr::kBlockM, p.fwd.heads, p.fwd.batch);
  dq<<<grid_q, Tr::kNThreads, smem, stream>>>(p, prefetch);
  check(cudaGetLastError(), "attention backward (dQ) launch");
}

}  // namespace ra::cuda::flash
