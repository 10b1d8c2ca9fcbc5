// Token embedding on CUDA: the lookup, and its backward as a deterministic scatter-add
// without atomics. The backward groups the tokens by id on the host (the ids come from the
// host anyway): one thread per (distinct id, column) adds that id's rows of dy, in token
// order, into dtable. Tokens that share an id are one thread's sequential adds, never a
// race, and the order is the CPU's (token order, float32): the result has the CPU's bits.
// Work spreads over distinct ids x columns, so a narrow table or a long sequence still
// fills the GPU; only a very frequent id makes its threads long.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.cuh"

namespace ra::cuda::ops {

constexpr int kEmbeddingThreads = 256;

// The tokens of each distinct id, in token order, as one int32 array for one upload:
// [ids of the U groups][U + 1 group starts][the token indices]. Built by a counting sort
// over the V rows of the table (ids must be in [0, V)): O(M + V), no comparison sort.
// Tokens whose id is `skip` (the padding row; -1: none) are left out.
struct TokenGroups {
  std::vector<int32_t> data;
  int64_t groups = 0;
  const int32_t* id(const int32_t* base) const { return base; }
  const int32_t* start(const int32_t* base) const { return base + groups; }
  const int32_t* token(const int32_t* base) const { return base + 2 * groups + 1; }
};

inline TokenGroups group_tokens_by_id(const int32_t* ids, int64_t M, int64_t V, int32_t skip = -1) {
  if (M > INT32_MAX) throw std::out_of_range("more than 2^31 - 1 tokens in one embedding backward");
  std::vector<int32_t> count(size_t(V) + 1, 0);
  int64_t kept = 0;
  for (int64_t m = 0; m < M; ++m) {
    if (ids[m] < 0 || ids[m] >= V)  // the TS layer refuses these first; this guards the host arrays
      throw std::out_of_range("ids[" + std::to_string(m) + "] = " + std::to_string(ids[m]) + " is outside [0, " +
                              std::to_string(V) + ")");
    if (ids[m] != skip) ++count[size_t(ids[m]) + 1], ++kept;
  }
  TokenGroups g;
  g.groups = std::count_if(count.begin() + 1, count.end(), [](int32_t c) { return c > 0; });
  g.data.resize(size_t(2 * g.groups + 1 + kept));
  int32_t* gid = g.data.data();
  int32_t* gstart = gid + g.groups;
  int32_t* gtoken = gstart + g.groups + 1;
  int64_t u = 0;
  for (int64_t v = 0; v < V; ++v) {  // count[v] is where id v's tokens begin; make count[v + 1] id v + 1's
    const int32_t n = count[size_t(v) + 1];
    count[size_t(v) + 1] = count[size_t(v)];
    if (n > 0) gid[u] = int32_t(v), gstart[u++] = count[size_t(v)];
    count[size_t(v) + 1] += n;
  }
  gstart[g.groups] = int32_t(kept);
  for (int64_t m = 0; m < M; ++m)  // stable: token order
    if (ids[m] != skip) gtoken[count[size_t(ids[m])]++] = int32_t(m);
  return g;
}

template <typename T>
__global__ void embedding_fwd_kernel(const int32_t* ids, const T* table, T* out, int64_t M, int64_t C) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * C; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = table[int64_t(ids[i / C]) * C + i % C];
}

// blockIdx.x: the group (distinct id); blockIdx.y: a run of columns.
template <typename T>
__global__ void embedding_bwd_kernel(const int32_t* group_id, const int32_t* group_start, const int32_t* token,
                                     const T* dy, float* dtable, int64_t C) {
  const int64_t c = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const int64_t u = blockIdx.x;
  float* d = dtable + int64_t(group_id[u]) * C + c;
  float acc = *d;
  for (int32_t j = group_start[u]; j < group_start[u + 1]; ++j) acc += to_f(dy[int64_t(token[j]) * C + c]);
  *d = acc;
}

// out[M,C] = table[ids[m]] (ids on the device, each in [0, V)).                 out =
template <typename T>
void launch_embedding_fwd(const int32_t* ids, const T* table, T* out, int64_t M, int64_t C, cudaStream_t stream) {
  RA_LAUNCH(embedding_fwd_kernel<T>, dim3{grid_for(M * C, kEmbeddingThreads)}, kEmbeddingThreads, 0, stream, ids,
            table, out, M, C);
}
// dtable[ids[m]] += dy[m] in token order, from `groups` (group_tokens_by_id) whose data
// is on the device at `device_data`.                                            dtable +=
template <typename T>
void launch_embedding_bwd(const TokenGroups& groups, const int32_t* device_data, const T* dy, float* dtable, int64_t C,
                          cudaStream_t stream) {
  if (groups.groups == 0 || C == 0) return;
  if (C > int64_t(65535) * kEmbeddingThreads)  // gridDim.y's limit
    throw std::out_of_range("embedding backward: " + std::to_string(C) + " columns, at most 65535 x 256 supported");
  const dim3 grid{unsigned(groups.groups), unsigned((C + kEmbeddingThreads - 1) / kEmbeddingThreads)};
  RA_LAUNCH(embedding_bwd_kernel<T>, grid, kEmbeddingThreads, 0, stream, groups.id(device_data),
            groups.start(device_data), groups.token(device_data), dy, dtable, C);
}

}  // namespace ra::cuda::ops
