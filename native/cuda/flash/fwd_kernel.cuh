// Forward: one block per (query tile, head, batch). Each warp owns kRowTiles tiles of 16
// query rows (kernel_traits.h); the loop over key tiles computes S = Q K^T on tensor cores,
// updates the running max and sum (online softmax, in registers), and accumulates O += P V with
// P taken straight from the score registers. The next K tile streams into shared memory while
// P V(j) computes, V(j) while S(j). Packed sequences: key tiles that share no document with the
// query tile are skipped (documents.cuh).
#pragma once
#include "documents.cuh"
#include "flash.h"
#include "kernel_traits.h"
#include "mma.cuh"
#include "online_softmax.cuh"

namespace ra::cuda::flash {

template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads) fwd_kernel(const FwdParams p) {
  using T = typename Tr::T;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim, kS = Tr::kStride;
  constexpr int kNT = kBN / 8, kDT = kD / 8;
  RA_DYNAMIC_SMEM(smem);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBM * kS;
  T* sV = sK + kBN * kS;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // Causal: the longest tiles (last queries) first, so that the tail of the grid is short.
  const int m_block = kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (p.heads / p.kv_heads);
  const int m0 = m_block * kBM;
  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + int64_t(m0) * p.q_row_stride + int64_t(h) * p.head_dim;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + int64_t(kvh) * p.head_dim;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + int64_t(kvh) * p.head_dim;

  // Key tiles past the diagonal of this query tile are never loaded.
  const int n_blocks = key_tiles_seen<kCausal>(p, m0, kBM, kBN);
  // Packed sequences: key tiles that share no document with this query tile are never loaded.
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, true, m0, min(kBM, p.seq_q - m0), from, n_blocks, kBN);
  };
  int nb = next_tile(0);

  load_tile<kBM, kD, Tr::kNThreads>(sQ, q, p.q_row_stride, p.seq_q - m0, p.head_dim, p.vec_ok);
  if (nb < n_blocks)
    load_tile<kBN, kD, Tr::kNThreads>(sK, k + int64_t(nb) * kBN * p.k_row_stride, p.k_row_stride, p.seq_k - nb * kBN,
                                      p.head_dim, p.vec_ok);
  cp_async_commit();

  constexpr int kR = Tr::kRowTiles, kTileStep = 16 * Tr::kNWarps;  // row tile r: rows + r kTileStep
  float acc[kR][kDT][4] = {};
  float row_max[kR][2], row_sum[kR][2] = {};
  const float scale_log2 = p.scale * kLog2e;
  const int row0 = m0 + warp * 16 + g;  // this lane's query rows: row0 + r kTileStep, and 8 more
  // Packed sequences: this lane's rows' documents, and the keys' (read where masked).
  const int* doc_k = p.doc_q ? p.doc_k + b * p.doc_k_batch_stride : nullptr;
  int doc_row[kR][2];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    row_max[r][0] = row_max[r][1] = -INFINITY;
    lane_documents(p.doc_q, p.doc_q_batch_stride, b, row0 + r * kTileStep, p.seq_q, doc_row[r]);
  }
  const T* sQw = sQ + warp * 16 * kS;

  while (nb < n_blocks) {
    const int n0 = nb * kBN, nb_next = next_tile(nb + 1);
    cp_async_wait_all();
    __syncthreads();  // K(nb) has landed, and every warp is done with V(nb - 1)
    load_tile<kBN, kD, Tr::kNThreads>(sV, v + int64_t(n0) * p.v_row_stride, p.v_row_stride, p.seq_k - n0,
                                      p.head_dim, p.vec_ok);
    cp_async_commit();

    float s[kR][kNT][4] = {};
    warp_mma_nt<T, kD>(s, sQw, kTileStep, sK, kS, lane);
    // Only the ragged last tile, tiles crossing the diagonal and tiles holding several
    // documents need a mask.
    const bool mixed = doc_k && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
    if (tile_needs_mask<kCausal>(p, m0, n0, kBN, mixed))
#pragma unroll
      for (int r = 0; r < kR; ++r)
        mask_scores<kCausal>(s[r], p, n0, row0 + r * kTileStep, t, mixed ? doc_k : nullptr, doc_row[r]);
#pragma unroll
    for (int r = 0; r < kR; ++r) online_softmax(s[r], acc[r], row_max[r], row_sum[r], scale_log2);

    cp_async_wait_all();
    __syncthreads();  // V(nb) has landed, and every warp is done with K(nb)
    if (nb_next < n_blocks)
      load_tile<kBN, kD, Tr::kNThreads>(sK, k + int64_t(nb_next) * kBN * p.k_row_stride, p.k_row_stride,
                                        p.seq_k - nb_next * kBN, p.head_dim, p.vec_ok);
    cp_async_commit();

    warp_mma_pb<T, kBN>(acc, s, sV, kS, lane);
    nb = nb_next;
  }

  cp_async_wait_all();  // a tile that sees no key never waited for its Q load

#pragma unroll
  for (int r = 0; r < kR; ++r) store_forward<T>(p, b, h, row0 + r * kTileStep, t, acc[r], row_max[r], row_sum[r]);
}

}  // namespace ra::cuda::flash
