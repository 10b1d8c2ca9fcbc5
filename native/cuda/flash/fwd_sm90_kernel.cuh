// Forward for Hopper (sm_90a): the loop of fwd_kernel.cuh with its products on warpgroup MMA
// (wgmma.cuh) instead of mma.sync. One block per (128-query tile, head, batch): two
// warpgroups of 128 threads, each with 64 query rows. Per 128-key tile, S = Q K^T is one
// batch of wgmma with Q and K read from shared memory, and O += P V another, with P straight
// from the score registers and V read from shared memory as an MN-major operand, so no
// tile is ever transposed. K/V tiles are double-buffered: tile j + 1 streams in (cp.async)
// while tile j computes. Masking, online softmax and the epilogue are online_softmax.cuh's;
// packed sequences skip the key tiles that share no document, as fwd_kernel.cuh does.
//
// Not yet here (issue #4, after a measured baseline): TMA loads, warp specialisation and
// swizzled layouts, as FlashAttention-3 has them. Used only where it applies (dispatch.cu):
// head dim 64 or 128 and 16-byte aligned rows; otherwise fwd_kernel.cuh runs.
#pragma once
#include "documents.cuh"
#include "flash.h"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "wgmma.cuh"

namespace ra::cuda::flash {

template <int kHeadDim_, typename T_>
struct Sm90FwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarpgroups = 2;
  static constexpr int kNThreads = 128 * kWarpgroups;
  static constexpr int kBlockM = 64 * kWarpgroups;
  static constexpr int kBlockN = 128;
  static constexpr int kTileQ = kBlockM * kHeadDim, kTileKV = kBlockN * kHeadDim;  // elements
  // Q once, K and V twice (double buffer): 160 KiB at head dim 128, within sm_90's 227 KiB.
  static constexpr int kSmemBytes = (kTileQ + 4 * kTileKV) * int(sizeof(T));
};

// The no-swizzle layout of a tile with kD columns: core matrix (r / 8, c / 8) is 64
// contiguous elements, its 8 rows 16 bytes apart, and core matrices of one row group follow
// each other along c. So stepping 8 columns is 128 bytes, stepping 8 rows kD * 16 bytes.
template <int kD>
__device__ __forceinline__ int blocked(int r, int c) {
  return ((r >> 3) * (kD / 8) + (c >> 3)) * 64 + (r & 7) * 8 + (c & 7);
}

// Rows [0, kRows) of a tile (kD columns, all inside the head dim) into the blocked layout;
// rows at or past valid_rows are zero-filled. Thread i writes the i-th 16 bytes of the tile,
// so that eight neighbouring threads fill one core matrix: no bank conflicts.
template <int kRows, int kD, int kThreads, typename T>
__device__ __forceinline__ void load_blocked(T* smem, const T* g, int64_t row_stride, int valid_rows) {
  for (int i = threadIdx.x; i < kRows * kD / 8; i += kThreads) {
    const int core = i >> 3, r = (core / (kD / 8)) * 8 + (i & 7), c = (core % (kD / 8)) * 8;
    T* dst = smem + i * 8;
    if (r < valid_rows) {
      cp_async16(dst, g + r * row_stride + c);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = T(0.f);
    }
  }
}

template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads, 1) fwd_sm90_kernel(const FwdParams p) {
  // Other architectures of a fat binary get an empty kernel; dispatch.cu launches this one
  // only on sm_90 devices of a build that has sm_90a code.
#if defined(RA_FLASH_EMULATOR) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Tr::T;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim;
  constexpr int kNT = kBN / 8, kDT = kD / 8;
  constexpr uint32_t kColStep = 128, kRowStep = kD * 16;  // bytes between core matrices (see blocked)
  RA_DYNAMIC_SMEM(smem);
  T* sQ = reinterpret_cast<T*>(smem);
  // K and V of buffer `buf` (0 or 1), by arithmetic: an array of pointers would sit in local memory
  auto sK = [&](int buf) { return sQ + Tr::kTileQ + buf * Tr::kTileKV; };
  auto sV = [&](int buf) { return sQ + Tr::kTileQ + (2 + buf) * Tr::kTileKV; };

  const int wg = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32, t = lane % 4;
  // Causal: the longest tiles (last queries) first, so that the tail of the grid is short.
  const int m_block = kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (p.heads / p.kv_heads);
  const int m0 = m_block * kBM;
  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + int64_t(m0) * p.q_row_stride + int64_t(h) * p.head_dim;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + int64_t(kvh) * p.head_dim;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + int64_t(kvh) * p.head_dim;

  // Key tiles past the diagonal of this query tile are never loaded.
  const int n_blocks = key_tiles_seen<kCausal>(p, m0, kBM, kBN);
  auto load_kv = [&](int nb, int buf) {
    const int n0 = nb * kBN;
    load_blocked<kBN, kD, Tr::kNThreads>(sK(buf), k + int64_t(n0) * p.k_row_stride, p.k_row_stride, p.seq_k - n0);
    load_blocked<kBN, kD, Tr::kNThreads>(sV(buf), v + int64_t(n0) * p.v_row_stride, p.v_row_stride, p.seq_k - n0);
  };
  // Packed sequences: key tiles that share no document with this query tile are never loaded.
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, true, m0, min(kBM, p.seq_q - m0), from, n_blocks, kBN);
  };
  int nb = next_tile(0);
  load_blocked<kBM, kD, Tr::kNThreads>(sQ, q, p.q_row_stride, p.seq_q - m0);
  if (nb < n_blocks) load_kv(nb, 0);
  cp_async_commit();

  float acc[kDT][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const float scale_log2 = p.scale * kLog2e;
  const int row0 = m0 + wg * 64 + warp * 16 + lane / 4;  // this lane's query rows: row0 and row0 + 8
  const T* sQg = sQ + blocked<kD>(wg * 64, 0);           // this warpgroup's 64 rows
  // Packed sequences: this lane's rows' documents, and the keys' (read where masked).
  const int* doc_k = p.doc_q ? p.doc_k + b * p.doc_k_batch_stride : nullptr;
  int doc_row[2];
  lane_documents(p.doc_q, p.doc_q_batch_stride, b, row0, p.seq_q, doc_row);

  for (int buf = 0; nb < n_blocks; buf ^= 1) {
    const int n0 = nb * kBN, nb_next = next_tile(nb + 1);
    cp_async_wait_all();
    fence_proxy_async();
    __syncthreads();  // tile nb has landed and is visible to wgmma; every warpgroup is done with the one before
    if (nb_next < n_blocks) load_kv(nb_next, buf ^ 1);
    cp_async_commit();

    float s[kNT][4];  // the first product overwrites it (accumulate = 0)
    fence_operands<kNT * 4>(&s[0][0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      wgmma_ss<T, kBN>(&s[0][0], wgmma_desc(sQg + blocked<kD>(0, kk * 16), kColStep, kRowStep),
                       wgmma_desc(sK(buf) + blocked<kD>(0, kk * 16), kColStep, kRowStep), kk > 0);
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<kNT * 4>(&s[0][0]);

    // Only the ragged last tile, tiles crossing the diagonal and tiles holding several
    // documents need a mask.
    const bool mixed = doc_k && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
    if (n0 + kBN > p.seq_k || (kCausal && int64_t(n0) + kBN - 1 > int64_t(m0) + p.causal_offset) || mixed)
      mask_scores<kCausal>(s, p, n0, row0, t, mixed ? doc_k : nullptr, doc_row);
    online_softmax(s, acc, row_max, row_sum, scale_log2);

    // P V: rows of V are the k index (MN-major B), so stepping 16 keys is two row groups and
    // the next 8 keys (k) are kRowStep away, the next 8 columns (n) kColStep.
    uint32_t pa[kBN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) acc_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
    fence_operands<kDT * 4>(&acc[0][0]);
    fence_operands<kBN / 16 * 4>(&pa[0][0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk)
      wgmma_rs<T, kD>(&acc[0][0], pa[kk], wgmma_desc(sV(buf) + blocked<kD>(kk * 16, 0), kRowStep, kColStep), 1);
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<kDT * 4>(&acc[0][0]);
    nb = nb_next;
  }

  cp_async_wait_all();  // a tile that sees no key never waited for its Q load
  store_forward<T>(p, b, h, row0, t, acc, row_max, row_sum);
#endif
}

}  // namespace ra::cuda::flash
