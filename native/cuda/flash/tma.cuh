// Hopper (sm_90a) building blocks of the warp-specialised kernels ({fwd,bwd}_sm90_kernel.cuh): the
// tensor memory accelerator (TMA), which copies a box of a tensor from global to shared memory
// on its own and then reports the bytes to an mbarrier; the mbarrier itself (a phase that
// completes once its expected arrivals and bytes are in); setmaxnreg, which moves registers
// from the producer warpgroup to the consumers; named barriers, which let the consumers meet
// without the producer; and bulk reductions, by which the TMA unit adds a buffer of shared
// memory into global memory.
//
// A tensor map describes one of q, k, v, dout as [batch, seq, heads, head_dim] (4 dims, innermost
// first, byte strides rising); its box is 64 columns (128 bytes) of `rows` rows of one head,
// written with the 128-byte swizzle: rows 128 bytes apart, and in each the 16-byte chunk j
// stored at chunk j ^ (bits 7-9 of its shared address), so that 8 consecutive rows spread
// over all 32 banks. That is the layout wgmma reads with a 128-byte-swizzle descriptor
// (tile_desc_k, tile_desc_mn below); a head dim of 128 is two boxes side by side. Rows past the
// sequence's end land as zeros. Under RA_FLASH_EMULATOR the same calls run on the CPU
// (test/flash-emulator/shim.h).
#pragma once
#include <cstdint>

#include "flash.h"
#include "wgmma.cuh"

namespace ra::cuda::flash {

// Every tensor the Hopper kernels load has 16-bit elements (bfloat16 or float16); a box is 64
// of them wide, the 128 bytes of the swizzle.
constexpr uint64_t kTmaElementBytes = 2;
constexpr int kTmaBoxCols = 64;

// What the host must know to describe one tensor: 4 dims (head_dim, heads, seq, batch), the
// byte strides of the outer three, and the box (kTmaBoxCols, 1, rows, 1).
struct TmaShape {
  const void* base;
  uint64_t dims[4];
  uint64_t strides[3];
  uint32_t box_rows;
};

// A [batch, seq, heads, head_dim] tensor of p's batch and head dim as a TMA
// shape, boxes of box_rows rows. seq 0 becomes 1 (a map's dims are non-zero; no kernel loads
// past the end), and the stride of a dim of size 1 becomes the span inside it (it is never
// stepped).
inline TmaShape tma_shape(const void* base, int64_t batch_stride, int64_t row_stride, int heads, int seq,
                          const FwdParams& p, int box_rows) {
  constexpr uint64_t esz = kTmaElementBytes;
  TmaShape s{base,
             {uint64_t(p.head_dim), uint64_t(heads), uint64_t(seq > 0 ? seq : 1), uint64_t(p.batch)},
             {p.head_dim * esz, row_stride * esz, batch_stride * esz},
             uint32_t(box_rows)};
  uint64_t span = s.dims[0] * esz;
  for (int i = 0; i < 3; ++i) {
    if (s.dims[i + 1] == 1) s.strides[i] = span;
    span = s.strides[i] * s.dims[i + 1];
  }
  return s;
}
// q, k or v of p.
inline TmaShape fwd_tma_shape(const FwdParams& p, char which, int box_rows) {
  if (which == 'q') return tma_shape(p.q, p.q_batch_stride, p.q_row_stride, p.heads, p.seq_q, p, box_rows);
  if (which == 'k') return tma_shape(p.k, p.k_batch_stride, p.k_row_stride, p.kv_heads, p.seq_k, p, box_rows);
  return tma_shape(p.v, p.v_batch_stride, p.v_row_stride, p.kv_heads, p.seq_k, p, box_rows);
}
// dout of a backward (o strides).
inline TmaShape dout_tma_shape(const BwdParams& bp, int box_rows) {
  const FwdParams& p = bp.fwd;
  return tma_shape(bp.dout, p.o_batch_stride, p.o_row_stride, p.heads, p.seq_q, p, box_rows);
}

// Whether the hardware can describe the tensor so: whole boxes across the head dim, the base
// 16-byte aligned, strides multiples of 16 bytes below 2^40, each at least the span of the
// dims inside it. True for the library's own layouts (whole tensors, ring views) at head dims
// 64 and 128; where it is not, dispatch.cu runs the default kernels.
inline bool tma_describable(const TmaShape& s) {
  if (s.dims[0] % kTmaBoxCols || reinterpret_cast<uintptr_t>(s.base) % 16) return false;
  uint64_t span = s.dims[0] * kTmaElementBytes;
  for (int i = 0; i < 3; ++i) {
    if (s.strides[i] % 16 || s.strides[i] >= (uint64_t(1) << 40) || s.strides[i] < span) return false;
    span = s.strides[i] * s.dims[i + 1];
  }
  return true;
}
inline bool fwd_tma_describable(const FwdParams& p) {
  return tma_describable(fwd_tma_shape(p, 'q', 1)) && tma_describable(fwd_tma_shape(p, 'k', 1)) &&
         tma_describable(fwd_tma_shape(p, 'v', 1));
}
// The backward also adds dQ's rows into dq_accum by bulk reductions (bulk_reduce_add), which
// take 16-byte aligned runs (unless dQ is left to its deterministic pass).
inline bool bwd_tma_describable(const BwdParams& bp) {
  return (bp.deterministic || dq_rows_aligned(bp)) && fwd_tma_describable(bp.fwd) && tma_describable(dout_tma_shape(bp, 1));
}

#ifdef RA_FLASH_EMULATOR
using TmaMap = EmuTensorMap;
inline TmaMap tma_map(const TmaShape& s, DType) { return emu_tensor_map(s.base, s.dims, s.strides, kTmaBoxCols, s.box_rows); }
inline void mbar_init(uint64_t* bar, int count) { emu_mbar_init(bar, count); }
inline void fence_mbar_init() {}
inline void mbar_arrive(uint64_t* bar) { emu_mbar_arrive(bar, 0); }
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) { emu_mbar_arrive(bar, bytes); }
inline void mbar_wait(uint64_t* bar, int parity) { emu_mbar_wait(bar, parity); }
inline void tma_load(void* dst, const TmaMap* map, uint64_t* bar, int col, int head, int row, int batch) {
  emu_tma_load(dst, map, bar, col, head, row, batch);
}
template <int kRegs> inline void setmaxnreg_inc() {}
template <int kRegs> inline void setmaxnreg_dec() {}
inline void named_barrier_sync(int id, int threads) { emu_named_barrier(id, threads, true); }
inline void named_barrier_arrive(int id, int threads) { emu_named_barrier(id, threads, false); }
inline void bulk_reduce_add(float* dst, const float* src, uint32_t bytes) { emu_bulk_reduce_add(dst, src, bytes); }
inline void bulk_commit() { emu_bulk_commit(); }
inline void bulk_wait_read_all() { emu_bulk_wait(0); }
inline void bulk_wait_all() { emu_bulk_wait(0); }
#else
// The driver's opaque 128-byte map, passed by value in the kernel's parameters.
struct alignas(128) TmaMap {
  uint64_t opaque[16];
};
// Made on the host through the driver's cuTensorMapEncodeTiled (tma_map.cu), reached through
// the runtime, so that nothing links libcuda. Throws with the driver's code if it refuses.
TmaMap tma_map(const TmaShape& s, DType dtype);

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// The initialised barriers made visible to the async proxy (TMA's completions), before the
// block's barrier that publishes them.
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// One arrival that also announces `bytes` still to come from TMA copies into this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// Until the phase of this parity has completed (a fresh barrier is in phase 0, so waiting on
// parity 1 returns at once: the producer's first pass over empty buffers).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nLAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
// The box at (col, head, row, batch) of `map` into dst (1024-byte aligned, where the swizzle
// pattern starts over); its bytes complete on `bar`. The CTA's own shared::cta addresses are
// valid shared::cluster ones.
__device__ __forceinline__ void tma_load(void* dst, const TmaMap* map, uint64_t* bar, int col, int head, int row,
                                         int batch) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(
          smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(head), "r"(row), "r"(batch), "r"(smem_addr(bar))
      : "memory");
}
// A barrier of `threads` threads (whole warps) only, for a part of the block: barrier 0 is
// __syncthreads'.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Counts the calling warps toward the barrier's `threads` without waiting for the others.
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// `bytes` (a multiple of 16) of float32 at src, in shared memory, added element by element and
// atomically to dst in global memory by the TMA unit (both 16-byte aligned): one instruction
// where ordinary atomics would take one per element and thread. The writers of src make it
// visible to the async proxy first (fence_proxy_async, then a barrier). The calling thread's
// reductions form bulk groups (bulk_commit); bulk_wait_read_all returns once all of them have
// read their shared memory, which may then be rewritten; bulk_wait_all once they are done.
__device__ __forceinline__ void bulk_reduce_add(float* dst, const float* src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
               "r"(smem_addr(src)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read_all() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
#endif

// Tiles as TMA writes them: a tile of kRows rows is kTmaBoxCols-column boxes side by side,
// each kRows rows of 128 bytes. tma_tile is where element (r, c) would be without the swizzle:
// what a descriptor's start or a box's destination names (r a multiple of 8). tma_tile_at is
// where it is: its 16-byte chunk XORed with r % 8 (the tile being 1024-byte aligned).
template <int kRows>
__host__ __device__ __forceinline__ int tma_tile(int r, int c) {
  return (c / kTmaBoxCols * kRows + r) * kTmaBoxCols + c % kTmaBoxCols;
}
template <int kRows>
__host__ __device__ __forceinline__ int tma_tile_at(int r, int c) {
  return tma_tile<kRows>(r, c) ^ ((r & 7) << 3);
}
// Descriptors of a tile read from (r, c) on. K-major (c is the k index, as for Q and K in
// Q K^T): 8-row groups 1024 bytes apart (the stride byte offset); one instruction's 16 k stay
// inside a 128-byte row, so the leading byte offset is unused, and stepping 16 k moves the
// start by 32 bytes (or to the next box). MN-major (r is the k index, as for V in P V):
// 8-row groups of k 1024 bytes apart (here the stride byte offset), and the next box along
// MN kRows * 128 bytes on (the leading one). CUTLASS's canonical SW128 layouts.
template <int kRows, typename T>
__device__ __forceinline__ uint64_t tile_desc_k(const T* tile, int r, int c) {
  return wgmma_desc_sw128(tile + tma_tile<kRows>(r, c), 16, 1024);
}
template <int kRows, typename T>
__device__ __forceinline__ uint64_t tile_desc_mn(const T* tile, int r, int c) {
  return wgmma_desc_sw128(tile + tma_tile<kRows>(r, c), kRows * 128, 1024);
}
// The block's dynamic shared memory from its first 1024-byte boundary on (kernels ask for
// 1024 bytes more): the swizzle pattern follows address bits, and wgmma reads tiles as starting
// on it.
__device__ __forceinline__ unsigned char* align_1024(unsigned char* smem) {
  return smem + (1024 - smem_addr(smem) % 1024) % 1024;
}

// The barriers of a producer/consumer pipeline, set up by thread 0 before the block's last
// __syncthreads: `once` (one arrival, with the bytes of the tiles loaded once), and per stage
// `full` (full_arrivals arrivals, one with the stage's bytes) and `empty` (one arrival per
// consumer thread).
__device__ __forceinline__ void init_pipeline(uint64_t* once, uint64_t* full, uint64_t* empty, int stages,
                                              int full_arrivals, int consumer_threads) {
  if (threadIdx.x != 0) return;
  mbar_init(once, 1);
  for (int st = 0; st < stages; ++st) mbar_init(&full[st], full_arrivals), mbar_init(&empty[st], consumer_threads);
  fence_mbar_init();
}

}  // namespace ra::cuda::flash
