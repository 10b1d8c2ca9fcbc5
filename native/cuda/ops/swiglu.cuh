// The elementwise half of the SwiGLU feed-forward on CUDA (the matrix products are cuBLAS
// calls in ffn.cu). gate and up come from cuBLAS as float32; what feeds the next product
// is written in the storage type T (bfloat16 products take bfloat16 operands). Same
// formulas as native/cpu/ops/ffn.cpp.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kSwigluThreads = 256;

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

// h = silu(g) * u. h may alias g when T is float.
template <typename T>
__global__ void swiglu_fwd_kernel(const float* g, const float* u, T* h, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gv = g[i];
    h[i] = from_f<T>(gv * sigmoid(gv) * u[i]);
  }
}

// With s = sigmoid(g), h = g s u:  dg = dh u s (1 + g (1 - s));  du = dh g s.
// dg may alias g and du may alias u when T is float.
template <typename T>
__global__ void swiglu_bwd_kernel(const float* g, const float* u, const float* dh, T* dg, T* du, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gv = g[i], uv = u[i], d = dh[i], s = sigmoid(gv);
    dg[i] = from_f<T>(d * uv * s * (1.f + gv * (1.f - s)));
    du[i] = from_f<T>(d * gv * s);
  }
}

template <typename T>
void launch_swiglu_fwd(const float* g, const float* u, T* h, int64_t n, cudaStream_t stream) {
  RA_LAUNCH(swiglu_fwd_kernel<T>, dim3{grid_for(n, kSwigluThreads)}, kSwigluThreads, 0, stream, g, u, h, n);
}
template <typename T>
void launch_swiglu_bwd(const float* g, const float* u, const float* dh, T* dg, T* du, int64_t n, cudaStream_t stream) {
  RA_LAUNCH(swiglu_bwd_kernel<T>, dim3{grid_for(n, kSwigluThreads)}, kSwigluThreads, 0, stream, g, u, dh, dg, du, n);
}

}  // namespace ra::cuda::ops
