// RMSNorm on CUDA, as the CPU op (native/cpu/ops/rmsnorm.cpp): one block per row for y and
// dx (float32 block sums), and dw as a deterministic two-stage column sum: row chunks write
// float32 partials [chunks, C], then one pass adds them in chunk order. No atomics, so the
// same inputs give the same bits on every run.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kNormThreads = 256;
constexpr int kNormSmem = 32 * sizeof(float);  // block_sum scratch

// Row chunks of the dw partial sums: at most 128, so the partials stay small ([128, C]),
// and enough to fill the GPU when M is large.
inline int64_t rmsnorm_dw_chunks(int64_t M) { return M < 128 ? (M < 1 ? 1 : M) : 128; }

template <typename T>
__global__ void rmsnorm_fwd_kernel(const T* x, const T* w, float eps, T* y, float* rstd, int64_t C) {
  RA_OPS_SMEM(float, scratch);
  const int64_t m = blockIdx.x;
  const T* xr = x + m * C;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = to_f(xr[c]);
    ss += v * v;
  }
  ss = block_sum(ss, scratch);
  // the CPU rounds 1/sqrt(mean + eps) from double; so do we (one double op per row)
  const float r = float(1.0 / sqrt(double(ss) / double(C) + double(eps)));
  if (threadIdx.x == 0) rstd[m] = r;
  T* yr = y + m * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) yr[c] = from_f<T>(to_f(w[c]) * (to_f(xr[c]) * r));
}

// With r = rstd and s = sum_c dy_c w_c x_c:  dx_c = r * (w_c dy_c - x_c * r^2 * s / C).
template <typename T>
__global__ void rmsnorm_dx_kernel(const T* dy, const T* x, const T* w, const float* rstd, T* dx, int64_t C) {
  RA_OPS_SMEM(float, scratch);
  const int64_t m = blockIdx.x;
  const T *xr = x + m * C, *gr = dy + m * C;
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += to_f(gr[c]) * to_f(w[c]) * to_f(xr[c]);
  s = block_sum(s, scratch);
  const float r = rstd[m], k = s / float(C) * r * r;
  T* d = dx + m * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) d[c] = from_f<T>(r * (to_f(w[c]) * to_f(gr[c]) - to_f(xr[c]) * k));
}

// partial[chunk, c] = sum over the chunk's rows of dy * x * rstd; grid (column blocks, chunks).
template <typename T>
__global__ void rmsnorm_dw_partial_kernel(const T* dy, const T* x, const float* rstd, float* partial, int64_t M,
                                          int64_t C, int64_t rows_per_chunk) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t m0 = blockIdx.y * rows_per_chunk, m1 = m0 + rows_per_chunk < M ? m0 + rows_per_chunk : M;
  float acc = 0.f;
  for (int64_t m = m0; m < m1; ++m) acc += to_f(dy[m * C + c]) * (to_f(x[m * C + c]) * rstd[m]);
  partial[blockIdx.y * C + c] = acc;
}

template <typename F>  // a template only so that each .cu may include this header
__global__ void column_sum_add_kernel(const F* partial, F* out, int64_t chunks, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  F acc = 0;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * C + c];
  out[c] += acc;
}

// y[M,C] = w * x * rstd, rstd[M] = 1/sqrt(mean(x^2) + eps).                      y =, rstd =
template <typename T>
void launch_rmsnorm_fwd(const T* x, const T* w, float eps, T* y, float* rstd, int64_t M, int64_t C,
                        cudaStream_t stream) {
  RA_LAUNCH(rmsnorm_fwd_kernel<T>, dim3{unsigned(M)}, kNormThreads, kNormSmem, stream, x, w, eps, y, rstd, C);
}

// dx[M,C] =; dw[C] +=. `partial` holds rmsnorm_dw_chunks(M) * C floats.
template <typename T>
void launch_rmsnorm_bwd(const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw, float* partial,
                        int64_t M, int64_t C, cudaStream_t stream) {
  RA_LAUNCH(rmsnorm_dx_kernel<T>, dim3{unsigned(M)}, kNormThreads, kNormSmem, stream, dy, x, w, rstd, dx, C);
  const int64_t chunks = rmsnorm_dw_chunks(M), rows = (M + chunks - 1) / chunks;
  const unsigned col_blocks = unsigned((C + kNormThreads - 1) / kNormThreads);
  RA_LAUNCH(rmsnorm_dw_partial_kernel<T>, (dim3{col_blocks, unsigned(chunks)}), kNormThreads, 0, stream, dy, x, rstd,
            partial, M, C, rows);
  RA_LAUNCH(column_sum_add_kernel<float>, dim3{col_blocks}, kNormThreads, 0, stream, partial, dw, chunks, C);
}

}  // namespace ra::cuda::ops
