// Hopper (sm_90a) warpgroup MMA for the kernels of fwd_sm90_kernel.cuh and bwd_sm90_kernel.cuh: four warps
// (128 threads) multiply a 64 x 16 A by a 16 x N B into a 64 x N float32 accumulator that
// stays in their registers, in the m16n8 accumulator layout of mma.cuh repeated over N / 8
// column tiles (warp w holds rows 16w..16w+15). Operands in shared memory are named by a
// descriptor, in one of two layouts. No swizzle (the backward's dS^T, written by ordinary
// stores): "core matrices" of 8 rows x 16 bytes, each 128 contiguous bytes; for K-major
// operands a core matrix is 8 rows x 8 k, for MN-major ones 8 k x 8 n, and the leading byte
// offset steps to the next core matrix along k, the stride byte offset along M/N. 128-byte
// swizzle (tiles TMA loaded, tma.cuh): rows of 128 bytes whose 16-byte chunks are permuted by
// address bits 7-9, with the offsets as tma.cuh's tile_desc_k and tile_desc_mn say (PTX ISA,
// "matrix descriptor"; CUTLASS's canonical INTERLEAVE and SW128 layouts).
// Under RA_FLASH_EMULATOR the same calls run on the CPU (test/flash-emulator/shim.h).
#pragma once
#include <cstdint>

#include "mma.cuh"

namespace ra::cuda::flash {

#ifdef RA_FLASH_EMULATOR
// The emulated block's shared window starts at emu_smem_window, as the hardware's need not start at 0.
inline uint32_t smem_addr(const void* p) { return uint32_t(static_cast<const unsigned char*>(p) - emu_smem) + emu_smem_window; }
template <typename T, int N>
inline void wgmma_ss(float* d, uint64_t a, uint64_t b, int accumulate) { emu_wgmma<T, N>(d, nullptr, a, b, false, false, accumulate); }
template <typename T, int N>
inline void wgmma_rs(float* d, const uint32_t* a, uint64_t b, int accumulate) { emu_wgmma<T, N>(d, a, 0, b, false, true, accumulate); }
template <typename T, int N>
inline void wgmma_ss_tt(float* d, uint64_t a, uint64_t b, int accumulate) { emu_wgmma<T, N>(d, nullptr, a, b, true, true, accumulate); }
inline void wgmma_fence() { emu_wgmma_fence(); }
inline void wgmma_commit() { emu_wgmma_commit(); }
inline void wgmma_wait_all() { emu_wgmma_wait_all(); }
template <int N> inline void wgmma_wait() { emu_wgmma_wait(N); }
inline void fence_proxy_async() { emu_fence_proxy_async(); }
template <int N, typename R> inline void fence_operands(R*) {}
#else
// The registers of a wgmma batch (accumulators, A fragments) pinned in place: the compiler may
// not move their ordinary reads and writes across this point, so none lands between
// wgmma_fence and wait_group, where the PTX ISA leaves them undefined (CUTLASS: warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void fence_operands(float* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_operands(uint32_t* r) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
// Registers the accumulator or A operand of a wgmma may have been written since the last
// wgmma: order those writes before the next one.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// All but the N most recently committed batches are done (their registers may be read).
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Shared memory written by ordinary stores and cp.async (the generic proxy) becomes visible
// to wgmma (the async proxy) only after this fence, by the writing thread, then a barrier.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// wgmma_ss: A (64 x 16) and B (N x 16, i.e. K-major) both in shared memory.
// wgmma_rs: A in registers (the mma.sync A fragment per warp), B MN-major in shared memory.
// wgmma_ss_tt: A and B both MN-major in shared memory (the backward's dQ = dS K from dS^T).
// accumulate = 0 ignores d's old values.
template <typename T, int N> __device__ void wgmma_ss(float* d, uint64_t a, uint64_t b, int accumulate);
template <typename T, int N> __device__ void wgmma_rs(float* d, const uint32_t* a, uint64_t b, int accumulate);
template <typename T, int N> __device__ void wgmma_ss_tt(float* d, uint64_t a, uint64_t b, int accumulate);

#define RA_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define RA_D32 RA_D8(0), RA_D8(8), RA_D8(16), RA_D8(24)
#define RA_D64 RA_D32, RA_D8(32), RA_D8(40), RA_D8(48), RA_D8(56)
#define RA_R8(a, b, c, d, e, f, g, h) "%" #a ", %" #b ", %" #c ", %" #d ", %" #e ", %" #f ", %" #g ", %" #h
#define RA_R32                                                                                                   \
  "{" RA_R8(0, 1, 2, 3, 4, 5, 6, 7) ", " RA_R8(8, 9, 10, 11, 12, 13, 14, 15) ", "                              \
  RA_R8(16, 17, 18, 19, 20, 21, 22, 23) ", " RA_R8(24, 25, 26, 27, 28, 29, 30, 31) "}"
#define RA_R64                                                                                                   \
  "{" RA_R8(0, 1, 2, 3, 4, 5, 6, 7) ", " RA_R8(8, 9, 10, 11, 12, 13, 14, 15) ", "                              \
  RA_R8(16, 17, 18, 19, 20, 21, 22, 23) ", " RA_R8(24, 25, 26, 27, 28, 29, 30, 31) ", "                        \
  RA_R8(32, 33, 34, 35, 36, 37, 38, 39) ", " RA_R8(40, 41, 42, 43, 44, 45, 46, 47) ", "                        \
  RA_R8(48, 49, 50, 51, 52, 53, 54, 55) ", " RA_R8(56, 57, 58, 59, 60, 61, 62, 63) "}"

// The operand numbers after the accumulators: A (descriptor or 4 registers), B, the flag.
// NAME: wgmma_ss (TA, TB = 0, 0) or wgmma_ss_tt (1, 1).
#define RA_WGMMA_SS(NAME, TA, TB, T, S, N, OUTS, REGS, A, B, P)                                              \
  template <>                                                                                                \
  __device__ __forceinline__ void NAME<T, N>(float* d, uint64_t a, uint64_t b, int accumulate) {             \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                              \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." S "." S " " REGS ", " A ", " B            \
                 ", p, 1, 1, " #TA ", " #TB ";\n}\n"                                                          \
                 : OUTS                                                                                      \
                 : "l"(a), "l"(b), "r"(accumulate));                                                         \
  }
#define RA_WGMMA_RS(T, S, N, OUTS, REGS, A, B, P)                                                            \
  template <>                                                                                                \
  __device__ __forceinline__ void wgmma_rs<T, N>(float* d, const uint32_t* a, uint64_t b, int accumulate) {  \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                              \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." S "." S " " REGS ", " A ", " B            \
                 ", p, 1, 1, 1;\n}\n"                                                                        \
                 : OUTS                                                                                      \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));                     \
  }
RA_WGMMA_SS(wgmma_ss, 0, 0, __nv_bfloat16, "bf16", 64, RA_D32, RA_R32, "%32", "%33", "%34")
RA_WGMMA_SS(wgmma_ss, 0, 0, __nv_bfloat16, "bf16", 128, RA_D64, RA_R64, "%64", "%65", "%66")
RA_WGMMA_SS(wgmma_ss, 0, 0, __half, "f16", 64, RA_D32, RA_R32, "%32", "%33", "%34")
RA_WGMMA_SS(wgmma_ss, 0, 0, __half, "f16", 128, RA_D64, RA_R64, "%64", "%65", "%66")
RA_WGMMA_SS(wgmma_ss_tt, 1, 1, __nv_bfloat16, "bf16", 64, RA_D32, RA_R32, "%32", "%33", "%34")
RA_WGMMA_SS(wgmma_ss_tt, 1, 1, __half, "f16", 64, RA_D32, RA_R32, "%32", "%33", "%34")
RA_WGMMA_RS(__nv_bfloat16, "bf16", 64, RA_D32, RA_R32, "{%32, %33, %34, %35}", "%36", "%37")
RA_WGMMA_RS(__nv_bfloat16, "bf16", 128, RA_D64, RA_R64, "{%64, %65, %66, %67}", "%68", "%69")
RA_WGMMA_RS(__half, "f16", 64, RA_D32, RA_R32, "{%32, %33, %34, %35}", "%36", "%37")
RA_WGMMA_RS(__half, "f16", 128, RA_D64, RA_R64, "{%64, %65, %66, %67}", "%68", "%69")
#undef RA_WGMMA_SS
#undef RA_WGMMA_RS
#undef RA_D8
#undef RA_D32
#undef RA_D64
#undef RA_R8
#undef RA_R32
#undef RA_R64
#endif

// A no-swizzle descriptor: start address, then the byte offsets between core matrices along
// k (lbo) and along M/N (sbo); all three in 16-byte units, 14 bits each.
__device__ __forceinline__ uint64_t wgmma_desc(const void* smem_ptr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((smem_addr(smem_ptr) >> 4) & 0x3fff) | (uint64_t((lbo >> 4) & 0x3fff) << 16) |
         (uint64_t((sbo >> 4) & 0x3fff) << 32);
}
// The same with the 128-byte swizzle (layout type 1, bits 62-63). The base offset (bits 49-51)
// stays 0: tiles start on 1024-byte boundaries (tma.cuh's align_1024), where the pattern does,
// and every start lies in the first 128-byte row of a pattern.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(const void* smem_ptr, uint32_t lbo, uint32_t sbo) {
  return wgmma_desc(smem_ptr, lbo, sbo) | (uint64_t(1) << 62);
}

}  // namespace ra::cuda::flash
