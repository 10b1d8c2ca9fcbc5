// Rotary embedding on CUDA with the CPU op's convention (native/cpu/ops/rope.cpp): Hugging
// Face rotate_half pairs (i, i + D/2); angle = pos * inv_freq[i] in double (inv_freq given,
// in double), cos/sin rounded to float32. One thread per (token, pair) computes its angle
// once and rotates that pair in every head. Double math costs little here (one cos and sin
// per token and pair) and keeps the angles exact at large positions, as on the CPU.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kRopeThreads = 256;

// out may equal x (each element is read and written by one thread).
template <typename T>
__global__ void rope_kernel(const T* x, const int32_t* positions, const double* inv_freq, T* out, int64_t M,
                            int64_t H, int64_t D, bool inverse) {
  const int64_t half = D / 2;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < M * half;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = idx / half, i = idx % half;
    const double a = double(positions[m]) * inv_freq[i];
    const float c = float(cos(a)), s = inverse ? -float(sin(a)) : float(sin(a));  // R(-a) = R(a)^T
    for (int64_t h = 0; h < H; ++h) {
      const T* xr = x + (m * H + h) * D;
      T* o = out + (m * H + h) * D;
      const float u = to_f(xr[i]), v = to_f(xr[i + half]);
      o[i] = from_f<T>(u * c - v * s);
      o[i + half] = from_f<T>(v * c + u * s);
    }
  }
}

// out[M,H,D] = rope(x), or its inverse (the backward). positions and inv_freq on the device.  out =
template <typename T>
void launch_rope(const T* x, const int32_t* positions, const double* inv_freq, T* out, int64_t M, int64_t H,
                 int64_t D, bool inverse, cudaStream_t stream) {
  RA_LAUNCH(rope_kernel<T>, dim3{grid_for(M * (D / 2), kRopeThreads)}, kRopeThreads, 0, stream, x, positions,
            inv_freq, out, M, H, D, inverse);
}

}  // namespace ra::cuda::ops
