// Warp-level building blocks shared by the forward and backward kernels: 16-byte
// asynchronous tile loads, ldmatrix fragment loads, and the m16n8k16 tensor-core MMA with
// float32 accumulation (sm_80 and later). Fragment layouts follow the PTX ISA: in a warp,
// lane = 4 * g + t; an accumulator tile (16 x 8) gives each lane rows g and g + 8,
// columns 2t and 2t + 1, as c[0], c[1] (row g) and c[2], c[3] (row g + 8).
#pragma once
#include <cstdint>
#ifndef RA_FLASH_EMULATOR
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace ra::cuda::flash {

constexpr float kLog2e = 1.4426950408889634f;

// ---- The hardware primitives: tensor-core MMA, ldmatrix, cp.async, dynamic shared memory.
// Under RA_FLASH_EMULATOR (test/flash-emulator/) the same kernels run on the CPU, one fiber
// per thread, with these emulated from the PTX ISA's layouts; nothing else differs.
#ifdef RA_FLASH_EMULATOR
#define RA_DYNAMIC_SMEM(name) unsigned char* name = emu_smem
template <typename T>
inline void mma_m16n8k16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) { emu_mma<T>(c, a, b0, b1); }
inline void ldmatrix_x4(uint32_t* r, const void* row) { emu_ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t* r, const void* row) { emu_ldmatrix(r, row, true); }
inline void cp_async16(void* dst, const void* src) { emu_cp_async(dst, src, 16); }
inline void cp_async4(void* dst, const void* src) { emu_cp_async(dst, src, 4); }
inline void cp_async_commit() { emu_cp_commit(); }
template <int kNewestLeft>
inline void cp_async_wait() { emu_cp_wait(kNewestLeft); }
inline void cp_async_wait_all() { emu_cp_wait(0); }
#else
// 128-byte aligned (the Hopper kernels align their tiles to 1024 bytes themselves: align_1024).
#define RA_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
template <typename T> __device__ void mma_m16n8k16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Four 8x8 matrices of 16-bit values; lane l gives the address of row (l % 8) of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits for every commit group of this thread but the newest kNewestLeft.
template <int kNewestLeft>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kNewestLeft) : "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { cp_async_wait<0>(); }
#endif

template <typename T> struct MmaOp;
template <> struct MmaOp<__nv_bfloat16> {
  __device__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    mma_m16n8k16<__nv_bfloat16>(c, a, b0, b1);
  }
  __device__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};
template <> struct MmaOp<__half> {
  __device__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) { mma_m16n8k16<__half>(c, a, b0, b1); }
  __device__ static uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
};

// The A operand (16 x 16, row-major in shared memory at `tile` with `stride` elements per
// row): r[0] rows 0-7 cols 0-7, r[1] rows 8-15 cols 0-7, r[2] rows 0-7 cols 8-15, r[3] rows 8-15 cols 8-15.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t* r, const T* tile, int stride, int lane) {
  const int m = lane >> 3;
  ldmatrix_x4(r, tile + ((m & 1) * 8 + (lane & 7)) * stride + (m >> 1) * 8);
}
// The A operand read transposed: A[i][k] = tile[k][i] (tile rows are the k index).
template <typename T>
__device__ __forceinline__ void load_a_trans(uint32_t* r, const T* tile, int stride, int lane) {
  const int m = lane >> 3;
  ldmatrix_x4_trans(r, tile + ((m >> 1) * 8 + (lane & 7)) * stride + (m & 1) * 8);
}
// B operands of two adjacent n-tiles where B[k][n] = tile[n][k] (tile rows are the n index,
// e.g. K for S = Q K^T): {r[0], r[1]} for n 0-7, {r[2], r[3]} for n 8-15.
template <typename T>
__device__ __forceinline__ void load_b(uint32_t* r, const T* tile, int stride, int lane) {
  const int m = lane >> 3;
  ldmatrix_x4(r, tile + ((m >> 1) * 8 + (lane & 7)) * stride + (m & 1) * 8);
}
// B operands where B[k][n] = tile[k][n] (tile rows are the k index, e.g. V for P V).
template <typename T>
__device__ __forceinline__ void load_b_trans(uint32_t* r, const T* tile, int stride, int lane) {
  const int m = lane >> 3;
  ldmatrix_x4_trans(r, tile + ((m & 1) * 8 + (lane & 7)) * stride + (m >> 1) * 8);
}

// The A operand of the next MMA from two accumulator tiles (columns 0-7 and 8-15 of a 16 x 16
// block): an accumulator's layout is the A fragment's, so P never goes through shared memory.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t* a, const float* c0, const float* c1) {
  a[0] = MmaOp<T>::pack(c0[0], c0[1]);
  a[1] = MmaOp<T>::pack(c0[2], c0[3]);
  a[2] = MmaOp<T>::pack(c1[0], c1[1]);
  a[3] = MmaOp<T>::pack(c1[2], c1[3]);
}

// The two products a warp makes in every kernel here, 16 deep per step, for kR row tiles of 16
// (the forward's warps own two: each B fragment then serves both, fewer shared-memory reads per
// product): one loop, told where row tile r's A fragment (a(kk, r, frag)) and each pair of
// B's 8-column tiles (b(kk, n, frag)) come from.
template <typename T, int kK, int kR, int kN, typename LoadA, typename LoadB>
__device__ __forceinline__ void warp_mma(float (&acc)[kR][kN][4], LoadA a, LoadB b) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t af[kR][4];
#pragma unroll
    for (int r = 0; r < kR; ++r) a(kk, r, af[r]);
#pragma unroll
    for (int n = 0; n < kN; n += 2) {
      uint32_t bf[4];
      b(kk, n, bf);
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        MmaOp<T>::run(acc[r][n], af[r], bf[0], bf[1]);
        MmaOp<T>::run(acc[r][n + 1], af[r], bf[2], bf[3]);
      }
    }
  }
}
// acc[r][n] += A_r B^T: A_r (16 x kK) row-major at `a` + r a_row_step rows, B's rows the n
// index (8 kN rows of kK) at `b`, all `stride` elements per row; e.g. S = Q K^T.
template <typename T, int kK, int kR, int kN>
__device__ __forceinline__ void warp_mma_nt(float (&acc)[kR][kN][4], const T* a, int a_row_step, const T* b,
                                            int stride, int lane) {
  warp_mma<T, kK>(
      acc, [&](int kk, int r, uint32_t* af) { load_a(af, a + r * a_row_step * stride + kk * 16, stride, lane); },
      [&](int kk, int n, uint32_t* bf) { load_b(bf, b + n * 8 * stride + kk * 16, stride, lane); });
}
template <typename T, int kK, int kN>
__device__ __forceinline__ void warp_mma_nt(float (&acc)[kN][4], const T* a, const T* b, int stride, int lane) {
  warp_mma_nt<T, kK>(reinterpret_cast<float(&)[1][kN][4]>(acc), a, 0, b, stride, lane);
}
// acc[r][n] += P_r B: P_r (16 x kK) in accumulator tiles, as the previous product left it
// (acc_to_a), B (kK x 8 kN) row-major at `b`; e.g. O += P V.
template <typename T, int kK, int kR, int kN>
__device__ __forceinline__ void warp_mma_pb(float (&acc)[kR][kN][4], const float (&p)[kR][kK / 8][4], const T* b,
                                            int stride, int lane) {
  warp_mma<T, kK>(
      acc, [&](int kk, int r, uint32_t* af) { acc_to_a<T>(af, p[r][2 * kk], p[r][2 * kk + 1]); },
      [&](int kk, int n, uint32_t* bf) { load_b_trans(bf, b + kk * 16 * stride + n * 8, stride, lane); });
}
template <typename T, int kK, int kN>
__device__ __forceinline__ void warp_mma_pb(float (&acc)[kN][4], const float (&p)[kK / 8][4], const T* b, int stride,
                                            int lane) {
  warp_mma_pb<T, kK>(reinterpret_cast<float(&)[1][kN][4]>(acc), reinterpret_cast<const float(&)[1][kK / 8][4]>(p), b,
                     stride, lane);
}

// Rows [0, kRows) x columns [0, kCols) of a tile into shared memory (row stride kCols + 8,
// which puts the eight rows an ldmatrix reads in different banks). Rows at or past
// `valid_rows` and columns at or past `cols` are zero-filled, so a ragged last tile and a
// head dim below the compiled one need no other masking of the loaded values.
template <int kRows, int kCols, int kThreads, typename T>
__device__ __forceinline__ void load_tile(T* smem, const T* g, int64_t row_stride, int valid_rows, int cols,
                                          bool vec_ok) {
  constexpr int kChunks = kCols / 8;
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    T* dst = smem + r * (kCols + 8) + c;
    const T* src = g + r * row_stride + c;
    if (r < valid_rows && vec_ok && c + 8 <= cols) {
      cp_async16(dst, src);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = (r < valid_rows && c + e < cols) ? src[e] : T(0.f);
    }
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Two adjacent output columns; the second only when it is inside the head dim.
template <typename T>
__device__ __forceinline__ void store2(T* p, float a, float b, bool second) {
  p[0] = T(a);
  if (second) p[1] = T(b);
}

}  // namespace ra::cuda::flash
