// What the op kernels (*.cuh beside this) share: the launch macro, dynamic shared memory,
// float32 <-> storage conversions and a block sum. Under RA_FLASH_EMULATOR the same kernels
// and launch functions run on the CPU emulator (test/flash-emulator/shim.h, driven by
// test/ops-emulator/test.cpp): the launch becomes emu_launch and shared memory emu_smem.
#pragma once
#include <cstdint>

#ifdef RA_FLASH_EMULATOR
#define RA_OPS_SMEM(type, name) type* name = reinterpret_cast<type*>(emu_smem)
#define RA_LAUNCH(kernel, grid, threads, smem, stream, ...) \
  emu_launch(grid, threads, smem, [&] { kernel(__VA_ARGS__); })
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define RA_OPS_SMEM(type, name)                             \
  extern __shared__ __align__(16) unsigned char name##_raw[]; \
  type* name = reinterpret_cast<type*>(name##_raw)
#define RA_LAUNCH(kernel, grid, threads, smem, stream, ...) kernel<<<grid, threads, smem, stream>>>(__VA_ARGS__)
#endif

namespace ra::cuda::ops {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// Grid-stride loops cap their grid here: enough blocks to fill any current GPU, few enough
// that the emulator runs them quickly.
inline unsigned grid_for(int64_t n, int threads, unsigned cap = 1024) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : b > cap ? cap : b);
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
// it. `scratch` is 32 values of shared memory, free again when this returns. The order of
// the additions is fixed by the block size alone: deterministic.
template <typename F>
__device__ __forceinline__ F block_sum(F v, F* scratch) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : F(0);
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  __syncthreads();  // scratch may be reused by the caller right away
  return v;
}
template <typename F>
__device__ __forceinline__ F block_max(F v, F* scratch) {
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  __syncthreads();
  return v;
}

}  // namespace ra::cuda::ops
