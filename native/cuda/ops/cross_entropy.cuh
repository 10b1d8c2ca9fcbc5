// The row half of the chunked LM-head cross-entropy on CUDA (the logits and the gradient
// products are cuBLAS calls in cross_entropy.cu): one block per row of the chunk reduces its
// float32 logits to a log-sum-exp (block max, then block sum of exp), writes the row's loss
// in double, and, for the backward, dlogits = grad_scale * (softmax - onehot) in the storage
// type T. Same formulas as native/cpu/ops/cross_entropy.cpp, whose sum of exp is in double.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kCeThreads = 256;
constexpr int kCeSmem = 32 * sizeof(float);

// dl may be null (loss only) or alias logits when T is float.
template <typename T>
__global__ void ce_row_kernel(const float* logits, const int32_t* targets, int64_t V, int32_t ignore_index,
                              float grad_scale, double* row_loss, T* dl) {
  RA_OPS_SMEM(float, scratch);
  const int64_t r = blockIdx.x;
  const float* l = logits + r * V;
  T* d = dl ? dl + r * V : nullptr;
  const int32_t t = targets[r];
  if (t == ignore_index) {  // the whole block takes this branch
    if (threadIdx.x == 0) row_loss[r] = 0;
    if (d)
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) d[j] = from_f<T>(0.f);
    return;
  }
  const float lt = l[t];  // read before any thread overwrites it in place (block_sum syncs)
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
  mx = block_max(mx, scratch);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) sum += expf(l[j] - mx);
  sum = block_sum(sum, scratch);
  const double lse = double(mx) + log(double(sum));
  if (threadIdx.x == 0) row_loss[r] = lse - double(lt);
  if (!d) return;
  // exp((l - mx) - log(sum)), not exp(l - float(lse)): lse rounded to float32 would scale every
  // probability by up to 2^-24 |lse| (3e-4 at logits of 1e4), and the gradient would not sum to 0.
  const float log_sum = float(log(double(sum)));
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    float p = grad_scale * expf((l[j] - mx) - log_sum);
    if (j == t) p -= grad_scale;
    d[j] = from_f<T>(p);
  }
}

// For `rows` rows of logits [rows, V]: row_loss[rows] =, and dl[rows, V] = when given.
template <typename T>
void launch_ce_rows(const float* logits, const int32_t* targets, int64_t rows, int64_t V, int32_t ignore_index,
                    float grad_scale, double* row_loss, T* dl, cudaStream_t stream) {
  RA_LAUNCH(ce_row_kernel<T>, dim3{unsigned(rows)}, kCeThreads, kCeSmem, stream, logits, targets, V, ignore_index,
            grad_scale, row_loss, dl);
}

}  // namespace ra::cuda::ops
