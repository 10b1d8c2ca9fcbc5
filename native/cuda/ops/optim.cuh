// AdamW and the gradient utilities on CUDA, elementwise over n values with grid-stride
// loops (the multi-tensor AdamW: a block per chunk of a tensor). AdamW is the CPU op's formula (native/cpu/ops/optim.cpp) with the bias corrections
// computed on the host in double, once per call. The sum of squares accumulates in double
// into one partial per block; the grid depends on n only, and the host adds the partials
// in block order, so the result is deterministic.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kOptimThreads = 256;
constexpr unsigned kSumBlocks = 256;  // most partials of sum_of_squares
constexpr int kSumSmem = 32 * sizeof(double);

// One element of torch.optim.AdamW, in place: the CPU op's formula (native/cpu/ops/optim.cpp).
// Every rounding is written out (intrinsics, fused where nvcc fused the plain expression
// before), so that each kernel calling this gets the same bits: nvcc contracts a plain
// expression into FMAs differently from one surrounding loop to another.
__device__ __forceinline__ void adamw_update(float& p, float g, float& m, float& v, float beta1, float beta2, float eps,
                                             float step_size, float bc2_sqrt, float lr_wd) {
  m = __fmaf_rn(__fsub_rn(1.f, beta1), g, __fmul_rn(beta1, m));                // beta1 m + (1 - beta1) g
  v = __fmaf_rn(g, __fmul_rn(__fsub_rn(1.f, beta2), g), __fmul_rn(beta2, v));  // beta2 v + (1 - beta2) g g
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), eps);  // sqrt(v) / bc2_sqrt + eps
  // The decay joins the update before rounding: 1 - lr*wd would round lr*wd to float32's
  // spacing near 1 (6e-8), and lose it entirely below half of that. (torch's fused AdamW
  // also subtracts lr*wd*p as a term of its own, rounding it apart from the update.)
  p = __fsub_rn(p, __fmaf_rn(lr_wd, p, __fmul_rn(step_size, __fdiv_rn(m, denom))));  // p - (lr_wd p + step_size m / denom)
}

template <typename F>  // a template only so that the header may be included anywhere
__global__ void adamw_kernel(F* param, const F* grad, F* m, F* v, int64_t n, F beta1, F beta2, F eps, F step_size,
                             F bc2_sqrt, F lr_wd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float p = param[i], mi = m[i], vi = v[i];
    adamw_update(p, grad[i], mi, vi, beta1, beta2, eps, step_size, bc2_sqrt, lr_wd);
    m[i] = mi, v[i] = vi, param[i] = p;
  }
}

// AdamW over many tensors in one launch (the trainer's step: ~150 tensors for a 1B model,
// where one launch each, then a scaling pass for clipping and a rounding pass for the
// bfloat16 copies, read and wrote every gradient and parameter again). Each tensor is a
// slice; each block takes kAdamWChunk elements of one slice.
struct AdamWSlice {
  float *param, *grad, *m, *v;
  void* copy;           // null, or where param goes rounded to the copies' dtype (the compute copy)
  int64_t n;            // elements, >= 1
  int64_t first_chunk;  // the slice's first block: the sum of the earlier slices' chunks
  float lr_wd;          // lr * weight decay, which differs per tensor
};
struct AdamWScalars {
  float beta1, beta2, eps, step_size, bc2_sqrt;
  float grad_scale;  // 1, or clipping's coefficient: the gradient is scaled (and written back) first
};
constexpr int kAdamWUnroll = 4;  // elements per thread and pass: 16 loads in flight, each coalesced
constexpr int64_t kAdamWChunk = int64_t(kOptimThreads) * kAdamWUnroll * 4;

template <typename C>  // the copies' storage type
__global__ void adamw_multi_kernel(const AdamWSlice* slices, int count, AdamWScalars s) {
  int lo = 0, hi = count;  // the last slice whose first chunk is at most this block
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (slices[mid].first_chunk <= int64_t(blockIdx.x)) lo = mid;
    else hi = mid;
  }
  const AdamWSlice t = slices[lo];
  const int64_t i0 = (int64_t(blockIdx.x) - t.first_chunk) * kAdamWChunk;
  const int64_t i1 = i0 + kAdamWChunk < t.n ? i0 + kAdamWChunk : t.n;
  for (int64_t base = i0 + threadIdx.x; base < i1; base += kAdamWUnroll * int64_t(blockDim.x)) {
    float p[kAdamWUnroll], g[kAdamWUnroll], m[kAdamWUnroll], v[kAdamWUnroll];
#pragma unroll
    for (int u = 0; u < kAdamWUnroll; ++u) {  // every load before any store
      const int64_t i = base + u * int64_t(blockDim.x);
      if (i < i1) p[u] = t.param[i], g[u] = t.grad[i], m[u] = t.m[i], v[u] = t.v[i];
    }
#pragma unroll
    for (int u = 0; u < kAdamWUnroll; ++u) {
      const int64_t i = base + u * int64_t(blockDim.x);
      if (i >= i1) continue;
      if (s.grad_scale != 1.f) t.grad[i] = g[u] = __fmul_rn(g[u], s.grad_scale);  // as scale_kernel rounds it
      adamw_update(p[u], g[u], m[u], v[u], s.beta1, s.beta2, s.eps, s.step_size, s.bc2_sqrt, t.lr_wd);
      t.param[i] = p[u], t.m[i] = m[u], t.v[i] = v[u];
      if (t.copy) static_cast<C*>(t.copy)[i] = from_f<C>(p[u]);
    }
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
// How many blocks a slice of n elements takes in launch_adamw_multi.
inline int64_t adamw_chunks(int64_t n) { return (n + kAdamWChunk - 1) / kAdamWChunk; }
// AdamW over `count` slices (on the device; first_chunk set by adamw_chunks) in one launch.
// param, m, v (and grad when scaled) updated; copy = param rounded
template <typename C>
void launch_adamw_multi(const AdamWSlice* slices, int count, int64_t chunks, const AdamWScalars& s, cudaStream_t stream) {
  RA_LAUNCH(adamw_multi_kernel<C>, dim3{unsigned(chunks)}, kOptimThreads, 0, stream, slices, count, s);
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
