// Token embedding on CUDA: the lookup, and its backward as a deterministic scatter-add
// without atomics: one thread per column walks every token in order and adds its row of dy
// into dtable[ids[m]]. Tokens that share an id never race (they are one thread's sequential
// adds), the sum order is the CPU's (token order, float32), so the result has the CPU's
// bits. The cost: only C threads, each M long; fine for C in the thousands, slow for
// tiny C. A sort-by-id segmented sum would parallelise over tokens; not needed yet.
#pragma once
#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kEmbeddingThreads = 256;

template <typename T>
__global__ void embedding_fwd_kernel(const int32_t* ids, const T* table, T* out, int64_t M, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * C; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = table[int64_t(ids[i / C]) * C + i % C];
}

template <typename T>
__global__ void embedding_bwd_kernel(const int32_t* ids, const T* dy, float* dtable, int64_t M, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  for (int64_t m = 0; m < M; ++m) dtable[int64_t(ids[m]) * C + c] += to_f(dy[m * C + c]);
}

// out[M,C] = table[ids[m]] (ids on the device, each in [0, V)).                 out =
template <typename T>
void launch_embedding_fwd(const int32_t* ids, const T* table, T* out, int64_t M, int64_t C, cudaStream_t stream) {
  RA_LAUNCH(embedding_fwd_kernel<T>, dim3{grid_for(M * C, kEmbeddingThreads)}, kEmbeddingThreads, 0, stream, ids,
            table, out, M, C);
}
// dtable[ids[m]] += dy[m] in token order.                                       dtable +=
template <typename T>
void launch_embedding_bwd(const int32_t* ids, const T* dy, float* dtable, int64_t M, int64_t C, cudaStream_t stream) {
  const unsigned blocks = unsigned((C + kEmbeddingThreads - 1) / kEmbeddingThreads);
  RA_LAUNCH(embedding_bwd_kernel<T>, dim3{blocks}, kEmbeddingThreads, 0, stream, ids, dy, dtable, M, C);
}

}  // namespace ra::cuda::ops
