// AdamW and the gradient utilities on CUDA, elementwise over n values with grid-stride
// loops. AdamW is the CPU op's formula (native/cpu/ops/optim.cpp) with the bias corrections
// computed on the host in double, once per call. The sum of squares accumulates in double
// into one partial per block; the grid depends on n only, and the host adds the partials
// in block order, so the result is deterministic.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kOptimThreads = 256;
constexpr unsigned kSumBlocks = 256;  // most partials of sum_of_squares
constexpr int kSumSmem = 32 * sizeof(double);

template <typename F>  // a template only so that the header may be included anywhere
__global__ void adamw_kernel(F* param, const F* grad, F* m, F* v, int64_t n, F beta1, F beta2, F eps, F step_size,
                             F bc2_sqrt, F lr_wd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    const float mi = beta1 * m[i] + (1.f - beta1) * g;
    const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    // The decay joins the update before rounding: 1 - lr*wd would round lr*wd to float32's
    // spacing near 1 (6e-8), and lose it entirely below half of that. (torch's fused AdamW
    // also subtracts lr*wd*p as a term of its own, rounding it apart from the update.)
    param[i] = param[i] - (lr_wd * param[i] + step_size * (mi / denom));
  }
}

template <typename T>
__global__ void sum_of_squares_kernel(const T* x, int64_t n, double* partial) {
  RA_OPS_SMEM(double, scratch);
  double s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double v = to_f(x[i]);
    s += v * v;
  }
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_f<T>(to_f(x[i]) * s);
}

template <typename T>
__global__ void add_kernel(T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    a[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

// One torch.optim.AdamW step in place (see native/cpu/ops.h for the formula).    param, m, v updated
inline void launch_adamw(float* param, const float* grad, float* m, float* v, int64_t n, float beta1, float beta2,
                         float eps, float step_size, float bc2_sqrt, float lr_wd, cudaStream_t stream) {
  RA_LAUNCH(adamw_kernel<float>, dim3{grid_for(n, kOptimThreads)}, kOptimThreads, 0, stream, param, grad, m, v, n, beta1,
            beta2, eps, step_size, bc2_sqrt, lr_wd);
}
// How many partials launch_sum_of_squares writes for n values.
inline unsigned sum_of_squares_blocks(int64_t n) { return grid_for(n, kOptimThreads, kSumBlocks); }
template <typename T>
void launch_sum_of_squares(const T* x, int64_t n, double* partial, cudaStream_t stream) {
  RA_LAUNCH(sum_of_squares_kernel<T>, dim3{sum_of_squares_blocks(n)}, kOptimThreads, kSumSmem, stream, x, n, partial);
}
template <typename T>
void launch_scale(T* x, int64_t n, float s, cudaStream_t stream) {
  RA_LAUNCH(scale_kernel<T>, dim3{grid_for(n, kOptimThreads)}, kOptimThreads, 0, stream, x, n, s);
}
template <typename T>
void launch_add(T* a, const T* b, int64_t n, cudaStream_t stream) {
  RA_LAUNCH(add_kernel<T>, dim3{grid_for(n, kOptimThreads)}, kOptimThreads, 0, stream, a, b, n);
}

}  // namespace ra::cuda::ops
