// Backward for Hopper (sm_90a): the dK/dV kernel of bwd_kernel.cuh with its five products on
// warpgroup MMA (wgmma.cuh). One block per (128-key tile, kv head, batch): two warpgroups,
// each with 64 keys, looping over the 64-query tiles of every query head of the GQA group, so
// that dK/dV of a group sum in registers. Per query tile:
//   S^T = K Q^T and dP^T = V dO^T   (one batch; K, V, Q, dO read from shared memory)
//   P^T = exp(S^T - lse), masked;   dV += P^T dO   (P^T from registers, dO MN-major)
//   dS^T = P^T (dP^T - delta);      dK += dS^T Q   (dS^T from registers, Q MN-major)
//   dQ += dS K (float32 atomics; each warpgroup half of the columns), from dS^T in shared
//   memory read as an MN-major A. With `deterministic`, dQ is left to bwd_dq_kernel instead.
// dV's product runs while dS^T is packed and stored. Tiles load with cp.async into the
// no-swizzle layout `blocked`; head dims 64 and 128 with 16-byte aligned rows only
// (dispatch.cu). Not yet here: TMA and warp specialisation (the forward has them), and
// double-buffered Q/dO.
#pragma once
#include "bwd_kernel.cuh"
#include "documents.cuh"
#include "flash.h"
#include "mma.cuh"
#include "wgmma.cuh"

namespace ra::cuda::flash {

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

template <int kHeadDim_, typename T_>
struct Sm90BwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNThreads = 256;
  static constexpr int kBlockN = 128;  // keys: 64 per warpgroup
  static constexpr int kBlockM = 64;   // queries per step
  static constexpr int kTileKV = kBlockN * kHeadDim, kTileQ = kBlockM * kHeadDim;  // elements
  // K, V, Q, dO, dS^T, then lse and delta: 112.5 KiB at head dim 128.
  static constexpr int kSmemBytes = (2 * kTileKV + 2 * kTileQ + kBlockN * kBlockM) * int(sizeof(T)) +
                                    2 * kBlockM * int(sizeof(float));
};

template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads, 1) bwd_sm90_kernel(const BwdParams bp, bool with_dq) {
#if defined(RA_FLASH_EMULATOR) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Tr::T;
  const FwdParams& p = bp.fwd;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim;
  constexpr int kMT = kBM / 8, kDT = kD / 8;
  // bytes between core matrices (see blocked): along columns, along rows of a kD-wide tile,
  // along rows of the kBM-wide dS^T
  constexpr uint32_t kColStep = 128, kRowStep = kD * 16, kSdsRowStep = kBM * 16;
  RA_DYNAMIC_SMEM(smem);
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + Tr::kTileKV;
  T* sQ = sV + Tr::kTileKV;
  T* sdO = sQ + Tr::kTileQ;
  T* sdS = sdO + Tr::kTileQ;  // dS^T: [key][query], kBM columns
  float* sLse = reinterpret_cast<float*>(sdS + kBN * kBM);
  float* sDelta = sLse + kBM;

  const int wg = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int kvh = blockIdx.y, b = blockIdx.z, n0 = blockIdx.x * kBN;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + int64_t(n0) * p.k_row_stride + int64_t(kvh) * p.head_dim;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + int64_t(n0) * p.v_row_stride + int64_t(kvh) * p.head_dim;
  load_blocked<kBN, kD, Tr::kNThreads>(sK, k, p.k_row_stride, p.seq_k - n0);
  load_blocked<kBN, kD, Tr::kNThreads>(sV, v, p.v_row_stride, p.seq_k - n0);
  cp_async_commit();

  float dk[kDT][4] = {}, dv[kDT][4] = {};
  const float scale_log2 = p.scale * kLog2e;
  const int group = p.heads / p.kv_heads;
  const int m_blocks = (p.seq_q + kBM - 1) / kBM;
  // Causal: query tiles that end before the first query seeing key n0 are skipped.
  const int m_begin = first_query_tile<kCausal>(p, n0, kBM, m_blocks);
  const int key0 = n0 + wg * 64 + warp * 16 + g;  // this lane's keys: key0 and key0 + 8
  const T* sKg = sK + blocked<kD>(wg * 64, 0);    // this warpgroup's 64 keys
  const T* sVg = sV + blocked<kD>(wg * 64, 0);
  // Packed sequences: this lane's keys' documents, and the queries' (read where masked).
  const int* doc_q = p.doc_q ? p.doc_q + b * p.doc_q_batch_stride : nullptr;
  int doc_key[2];
  lane_documents(doc_q ? p.doc_k : nullptr, p.doc_k_batch_stride, b, key0, p.seq_k, doc_key);
  // ... and query tiles that share no document with this key tile are skipped.
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, false, n0, min(kBN, p.seq_k - n0), from, m_blocks, kBM);
  };

  for (int hq = kvh * group; hq < (kvh + 1) * group; ++hq) {
    for (int mb = next_tile(m_begin); mb < m_blocks; mb = next_tile(mb + 1)) {
      const int m0 = mb * kBM;
      __syncthreads();  // every warpgroup is done with the previous Q, dO, dS^T, lse and delta
      const int64_t q_off = b * p.q_batch_stride + int64_t(m0) * p.q_row_stride + int64_t(hq) * p.head_dim;
      const int64_t o_off = b * p.o_batch_stride + int64_t(m0) * p.o_row_stride + int64_t(hq) * p.head_dim;
      load_blocked<kBM, kD, Tr::kNThreads>(sQ, static_cast<const T*>(p.q) + q_off, p.q_row_stride, p.seq_q - m0);
      load_blocked<kBM, kD, Tr::kNThreads>(sdO, static_cast<const T*>(bp.dout) + o_off, p.o_row_stride, p.seq_q - m0);
      const int64_t l_off = b * p.lse_batch_stride + int64_t(hq) * p.lse_head_stride + m0;
      for (int i = threadIdx.x; i < kBM; i += Tr::kNThreads) {
        const bool in = m0 + i < p.seq_q;
        sLse[i] = in ? lse_log2(p.lse[l_off + i]) : INFINITY;
        sDelta[i] = in ? bp.delta[l_off + i] : 0.f;
      }
      cp_async_commit();
      cp_async_wait_all();
      fence_proxy_async();
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T for this warpgroup's 64 keys, in one batch.
      float s[kMT][4], dp[kMT][4];
      fence_operands<kMT * 4>(&s[0][0]);
      fence_operands<kMT * 4>(&dp[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        wgmma_ss<T, kBM>(&s[0][0], wgmma_desc(sKg + blocked<kD>(0, kk * 16), kColStep, kRowStep),
                         wgmma_desc(sQ + blocked<kD>(0, kk * 16), kColStep, kRowStep), kk > 0);
        wgmma_ss<T, kBM>(&dp[0][0], wgmma_desc(sVg + blocked<kD>(0, kk * 16), kColStep, kRowStep),
                         wgmma_desc(sdO + blocked<kD>(0, kk * 16), kColStep, kRowStep), kk > 0);
      }
      wgmma_commit();
      wgmma_wait_all();
      fence_operands<kMT * 4>(&s[0][0]);
      fence_operands<kMT * 4>(&dp[0][0]);

      // P^T (0 where masked)
      const bool mixed = doc_q && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
      // Causal: query m0 + qi sees key0 when qi >= first_q, key0 + 8 when qi >= first_q + 8
      // (clamped to [-8, kBM], which keeps both tests exact, so that it fits an int).
      const int first_q = int(max(int64_t(-8), min(int64_t(kBM), int64_t(key0) - p.causal_offset - m0)));
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + (e >> 1) * 8, qi = mt * 8 + 2 * t + (e & 1);
          const bool masked = key >= p.seq_k || (kCausal && qi < first_q + (e >> 1) * 8) ||
                              (mixed && m0 + qi < p.seq_q && doc_q[m0 + qi] != doc_key[e >> 1]);
          s[mt][e] = masked ? 0.f : exp2f(s[mt][e] * scale_log2 - sLse[qi]);
        }

      // dS^T = P^T (dP^T - delta), in place of dP^T.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[mt][e] = s[mt][e] * (dp[mt][e] - sDelta[mt * 8 + 2 * t + (e & 1)]);

      // dV += P^T dO on the tensor cores, while dS^T is packed into A fragments and, for dQ,
      // stored to shared memory (register j of pds[kk]: row g + 8 (j % 2), columns
      // 16 kk + 8 (j / 2) + 2t). Packing dS^T only after the issue keeps fewer registers live.
      uint32_t pa[kBM / 16][4], pds[kBM / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) acc_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
      fence_operands<kDT * 4>(&dv[0][0]);
      fence_operands<kBM / 16 * 4>(&pa[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs<T, kD>(&dv[0][0], pa[kk], wgmma_desc(sdO + blocked<kD>(kk * 16, 0), kRowStep, kColStep), 1);
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) acc_to_a<T>(pds[kk], dp[2 * kk], dp[2 * kk + 1]);
      if (with_dq) {
        const int r0 = wg * 64 + warp * 16 + g;
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            *reinterpret_cast<uint32_t*>(sdS + blocked<kBM>(r0 + 8 * (j % 2), 16 * kk + 8 * (j / 2) + 2 * t)) = pds[kk][j];
      }
      wgmma_wait_all();
      fence_operands<kDT * 4>(&dv[0][0]);
      fence_operands<kBM / 16 * 4>(&pa[0][0]);

      // dK += dS^T Q (scaled once, at the end)
      fence_operands<kDT * 4>(&dk[0][0]);
      fence_operands<kBM / 16 * 4>(&pds[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs<T, kD>(&dk[0][0], pds[kk], wgmma_desc(sQ + blocked<kD>(kk * 16, 0), kRowStep, kColStep), 1);
      wgmma_commit();
      wgmma_wait_all();
      fence_operands<kDT * 4>(&dk[0][0]);
      fence_operands<kBM / 16 * 4>(&pds[0][0]);
      if (!with_dq) continue;

      // dQ = dS K: A = dS (queries x keys) read from dS^T as an MN-major operand, B = K read
      // as MN-major too; warpgroup wg computes columns [wg kD/2, (wg + 1) kD/2).
      fence_proxy_async();
      __syncthreads();  // all of dS^T is written and visible to wgmma
      constexpr int kHalf = kD / 2;
      float dq[kHalf / 2];
      fence_operands<kHalf / 2>(dq);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        wgmma_ss_tt<T, kHalf>(dq, wgmma_desc(sdS + blocked<kBM>(kk * 16, 0), kSdsRowStep, kColStep),
                              wgmma_desc(sK + blocked<kD>(kk * 16, wg * kHalf), kRowStep, kColStep), kk > 0);
      wgmma_commit();
      wgmma_wait_all();
      fence_operands<kHalf / 2>(dq);
      float* dq_rows = bp.dq_accum + b * bp.dq_batch_stride + int64_t(hq) * p.head_dim;
#pragma unroll
      for (int i = 0; i < kHalf / 2; ++i) {
        const int row = m0 + warp * 16 + g + 8 * ((i >> 1) & 1), col = wg * kHalf + (i >> 2) * 8 + 2 * t + (i & 1);
        if (row < p.seq_q) atomicAdd(dq_rows + int64_t(row) * bp.dq_row_stride + col, dq[i] * p.scale);
      }
    }
  }

  cp_async_wait_all();  // a key tile that no query sees never waited for its K/V load

  store_dkdv(bp, b, kvh, key0, t, 0, dk, dv);
#endif
}

}  // namespace ra::cuda::flash
