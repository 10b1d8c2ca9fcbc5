// Backward, FlashAttention-2 style: the probabilities are recomputed from Q, K and the
// forward's lse, never stored. dK/dV: one block per (key tile, kv head, batch), looping over
// the query tiles of every query head of its GQA group, so that dK/dV of a group sum in
// registers without atomics. dQ: either float32 atomics from that same loop, or
// (deterministic) a second kernel, one block per query tile, that owns its dQ rows. Both load
// the operand needed second (dO, V) under the first product and, with `prefetch` (where a
// second buffer costs no block per SM: launch.cuh), the tile they loop over one step ahead
// (FlashAttention-2's backward also loads its next Q tile ahead).
#pragma once
#include <cmath>

#include "documents.cuh"
#include "flash.h"
#include "kernel_traits.h"
#include "mma.cuh"

namespace ra::cuda::flash {

// lse in log2 units for exp2; a row that saw no key (lse -inf) gets +inf, so that its
// recomputed probabilities are 0, not exp(+inf) or NaN.
__device__ __forceinline__ float lse_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * kLog2e; }

// dK/dV of this lane's keys (key0, key0 + 8), columns col_base + 8 dt + 2t (+1), into the
// float32 accumulators (dK scaled here, once). The calling block alone owns these rows: a
// plain read-add-write is race-free and deterministic.
template <int kNDT>
__device__ __forceinline__ void store_dkdv(const BwdParams& bp, int b, int kvh, int key0, int t, int col_base,
                                           const float (&dk)[kNDT][4], const float (&dv)[kNDT][4]) {
  const FwdParams& p = bp.fwd;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key0 + 8 * r;
    if (key >= p.seq_k) continue;
    float* dkr = bp.dk_accum + b * bp.dk_batch_stride + int64_t(key) * bp.dk_row_stride + int64_t(kvh) * p.head_dim;
    float* dvr = bp.dv_accum + b * bp.dk_batch_stride + int64_t(key) * bp.dk_row_stride + int64_t(kvh) * p.head_dim;
#pragma unroll
    for (int dt = 0; dt < kNDT; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = col_base + dt * 8 + 2 * t + e;
        if (col >= p.head_dim) continue;
        dkr[col] = (bp.dkv_overwrite ? 0.f : dkr[col]) + dk[dt][2 * r + e] * p.scale;
        dvr[col] = (bp.dkv_overwrite ? 0.f : dvr[col]) + dv[dt][2 * r + e];
      }
  }
}

// dQ's float32 atomics from a warp's staged rows (`rows` of them, `cols` columns from c0, at
// `stage`, kStride floats apart) into rows row0, row0 + 1, ... of dq (dq_row_stride apart):
// each warp instruction adds one row's 32 columns, or with vec4 (sm_90 and later, aligned rows:
// dispatch.cu's dq_vec4) four rows' 32 columns, four floats per atomic.
template <int kStride>
__device__ __forceinline__ void add_dq_rows(float* dq, int64_t dq_row_stride, int row0, const float* stage, int rows,
                                            int cols, int c0, int lane, bool vec4) {
// float4 atomics came with CUDA 12.1; before it, vec4 falls back to the row-wise loop below.
#if defined(RA_FLASH_EMULATOR) || \
    (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && __CUDACC_VER_MAJOR__ * 100 + __CUDACC_VER_MINOR__ >= 1201)
  if (vec4) {
    const int c = (lane % 8) * 4;
#pragma unroll 1
    for (int r0 = 0; r0 < 16; r0 += 4) {
      const int r = r0 + lane / 8;
      if (r < rows && c < cols)
        atomicAdd(reinterpret_cast<float4*>(dq + (row0 + r) * dq_row_stride + c0 + c),
                  *reinterpret_cast<const float4*>(stage + r * kStride + c));
    }
    return;
  }
#endif
#pragma unroll 2
  for (int r = 0; r < 16; ++r)
    if (r < rows && lane < cols) atomicAdd(dq + (row0 + r) * dq_row_stride + c0 + lane, stage[r * kStride + lane]);
}

template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads)
    bwd_dkdv_kernel(const BwdParams bp, int col_base, bool with_dq, bool dq_vec4, bool prefetch) {
  using T = typename Tr::T;
  const FwdParams& p = bp.fwd;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim, kS = Tr::kStride;
  constexpr int kDA = Tr::kDAcc, kSS = Tr::kSdsStride, kMT = kBM / 8;
  RA_DYNAMIC_SMEM(smem);
  T* sQ0 = reinterpret_cast<T*>(smem);
  T* sdO = sQ0 + kBM * kS;
  T* sK = sdO + kBM * kS;
  T* sV = sK + kBN * kS;
  T* sdS = sV + kBN * kS;  // dS^T: [key][query]
  float* sLse = reinterpret_cast<float*>(sdS + kBN * kSS);  // [2][kBM], as Q's buffers
  float* sDelta = sLse + 2 * kBM;                            // [2][kBM]
  T* sQ1 = reinterpret_cast<T*>(sDelta + 2 * kBM);  // only with `prefetch`: kernel_traits.h
  auto sQs = [&](int buf) { return buf ? sQ1 : sQ0; };  // (an array of pointers would sit in local memory)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int kvh = blockIdx.y, b = blockIdx.z, n0 = blockIdx.x * kBN;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + int64_t(n0) * p.k_row_stride + int64_t(kvh) * p.head_dim;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + int64_t(n0) * p.v_row_stride + int64_t(kvh) * p.head_dim;
  load_tile<kBN, kD, Tr::kNThreads>(sK, k, p.k_row_stride, p.seq_k - n0, p.head_dim, p.vec_ok);
  load_tile<kBN, kD, Tr::kNThreads>(sV, v, p.v_row_stride, p.seq_k - n0, p.head_dim, p.vec_ok);
  cp_async_commit();

  float dk[kDA / 8][4] = {}, dv[kDA / 8][4] = {};
  const float scale_log2 = p.scale * kLog2e;
  const int group = p.heads / p.kv_heads;
  const int m_blocks = (p.seq_q + kBM - 1) / kBM;
  // Causal: query tiles that end before the first query seeing key n0 are skipped.
  const int m_begin = first_query_tile<kCausal>(p, n0, kBM, m_blocks);
  const int key0 = n0 + warp * 16 + g;  // this lane's keys: key0 and key0 + 8
  // Packed sequences: this lane's keys' documents, and the queries' (read where masked).
  const int* doc_q = p.doc_q ? p.doc_q + b * p.doc_q_batch_stride : nullptr;
  int doc_key[2];
  lane_documents(doc_q ? p.doc_k : nullptr, p.doc_k_batch_stride, b, key0, p.seq_k, doc_key);
  // ... and query tiles that share no document with this key tile are skipped. The tiles seen
  // are the same for every query head of the group: the loop visits (head, tile) in order.
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, false, n0, min(kBN, p.seq_k - n0), from, m_blocks, kBM);
  };
  const int mb_first = next_tile(m_begin), hq_end = (kvh + 1) * group;
  auto advance = [&](int& hq, int& mb) {
    mb = next_tile(mb + 1);
    if (mb >= m_blocks) ++hq, mb = mb_first;
  };

  // Q, lse and delta of query tile mb of head hq into buffer `buf`, by cp.async; lse arrives
  // in natural-log units (lse_log2 converts it once it lands), rows past seq_q get lse +inf
  // (probabilities 0) and delta 0.
  auto load_q = [&](int buf, int hq, int mb) {
    const int m0 = mb * kBM;
    load_tile<kBM, kD, Tr::kNThreads>(sQs(buf), static_cast<const T*>(p.q) + b * p.q_batch_stride +
                                                    int64_t(m0) * p.q_row_stride + int64_t(hq) * p.head_dim,
                                      p.q_row_stride, p.seq_q - m0, p.head_dim, p.vec_ok);
    const int64_t l_off = b * p.lse_batch_stride + int64_t(hq) * p.lse_head_stride + m0;
    for (int i = threadIdx.x; i < kBM; i += Tr::kNThreads) {
      if (m0 + i < p.seq_q) {
        cp_async4(sLse + buf * kBM + i, p.lse + l_off + i);
        cp_async4(sDelta + buf * kBM + i, bp.delta + l_off + i);
      } else {
        sLse[buf * kBM + i] = INFINITY;
        sDelta[buf * kBM + i] = 0.f;
      }
    }
  };
  if (prefetch && mb_first < m_blocks) load_q(0, kvh * group, mb_first);
  cp_async_commit();

  // Each step commits three groups: this tile's Q (or nothing: with `prefetch` it came a step
  // earlier), its dO, and the next tile's Q (or nothing); wait<2> then leaves dO and the next Q
  // in flight, wait<1> the next Q.
  int buf = 0;
  for (int hq = kvh * group, mb = mb_first; hq < hq_end && mb < m_blocks; buf ^= int(prefetch)) {
    const int m0 = mb * kBM;
    __syncthreads();  // every warp is done with the previous tile's dO, dS, Q and dQ staging
    if (!prefetch) load_q(0, hq, mb);
    cp_async_commit();
    const int64_t o_off = b * p.o_batch_stride + int64_t(m0) * p.o_row_stride + int64_t(hq) * p.head_dim;
    load_tile<kBM, kD, Tr::kNThreads>(sdO, static_cast<const T*>(bp.dout) + o_off, p.o_row_stride, p.seq_q - m0,
                                      p.head_dim, p.vec_ok);
    cp_async_commit();
    if (prefetch) {
      int hq_next = hq, mb_next = mb;
      advance(hq_next, mb_next);
      if (hq_next < hq_end) load_q(buf ^ 1, hq_next, mb_next);
    }
    cp_async_commit();
    cp_async_wait<2>();  // K, V (first tile), and this tile's Q, lse and delta
    const T* sQ = sQs(buf);
    float* lse2 = sLse + buf * kBM;
    const float* delta = sDelta + buf * kBM;
    for (int i = threadIdx.x; i < kBM; i += Tr::kNThreads) lse2[i] = lse_log2(lse2[i]);  // this thread's copies
    __syncthreads();

    // S^T = K Q^T for this warp's 16 keys, then P^T (0 where masked).
    float s[kMT][4] = {};
    warp_mma_nt<T, kD>(s, sK + warp * 16 * kS, sQ, kS, lane);
    const bool mixed = doc_q && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
    if (tile_needs_mask<kCausal>(p, m0, n0, kBN, mixed)) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + (e >> 1) * 8, qi = mt * 8 + 2 * t + (e & 1);
          const bool masked = key >= p.seq_k || (kCausal && key > int64_t(m0 + qi) + p.causal_offset) ||
                              (mixed && m0 + qi < p.seq_q && doc_q[m0 + qi] != doc_key[e >> 1]);
          s[mt][e] = masked ? 0.f : exp2f(s[mt][e] * scale_log2 - lse2[qi]);
        }
    } else {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][e] = exp2f(s[mt][e] * scale_log2 - lse2[mt * 8 + 2 * t + (e & 1)]);
    }
    cp_async_wait<1>();  // this tile's dO
    __syncthreads();
    warp_mma_pb<T, kBM>(dv, s, sdO + col_base, kS, lane);  // dV += P^T dO
    // dP^T = V dO^T, then dS^T = P^T * (dP^T - delta), in place of P^T.
    {
      float dp[kMT][4] = {};
      warp_mma_nt<T, kD>(dp, sV + warp * 16 * kS, sdO, kS, lane);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][e] *= dp[mt][e] - delta[mt * 8 + 2 * t + (e & 1)];
    }
    warp_mma_pb<T, kBM>(dk, s, sQ + col_base, kS, lane);  // dK += dS^T Q (scaled once, at the end)

    if (with_dq) {
      // dQ = dS K for this query tile: dS^T goes through shared memory because each warp
      // needs every key of the tile; warp w then owns queries 16w .. 16w + 15.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g) * kSS + mt * 8 + 2 * t) = MmaOp<T>::pack(s[mt][0], s[mt][1]);
        *reinterpret_cast<uint32_t*>(sdS + (warp * 16 + g + 8) * kSS + mt * 8 + 2 * t) = MmaOp<T>::pack(s[mt][2], s[mt][3]);
      }
      __syncthreads();  // also: no warp reads this Q or dO again (a next tile's Q is in the other buffer)
      float* dq = bp.dq_accum + b * bp.dq_batch_stride + int64_t(hq) * p.head_dim;
      const int dq_row0 = m0 + warp * 16, dq_rows = min(16, p.seq_q - dq_row0);
      // This warp's rows, from this Q buffer on (kernel_traits.h: room enough after each).
      float* stage = reinterpret_cast<float*>(sQs(buf)) + warp * 16 * Tr::kDqStride;
#pragma unroll 1
      for (int c0 = 0; c0 < kD && c0 < p.head_dim; c0 += Tr::kDqCols) {  // few registers at a time
        float acc[4][4] = {};
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk) {
          uint32_t a[4];
          load_a_trans(a, sdS + kk * 16 * kSS + warp * 16, kSS, lane);
#pragma unroll
          for (int dt = 0; dt < 4; dt += 2) {
            uint32_t bb[4];
            load_b_trans(bb, sK + kk * 16 * kS + c0 + dt * 8, kS, lane);
            MmaOp<T>::run(acc[dt], a, bb[0], bb[1]);
            MmaOp<T>::run(acc[dt + 1], a, bb[2], bb[3]);
          }
        }
        // Through shared memory, so that each atomic instruction of the warp adds whole 128-byte
        // runs of rows (four full 32-byte sectors) rather than pairs scattered over 8 rows
        // (eight half-used sectors), as the accumulator's layout would have it.
        __syncwarp();  // the last pass's rows are read
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
          for (int dt = 0; dt < 4; ++dt)
            *reinterpret_cast<float2*>(stage + (g + 8 * r) * Tr::kDqStride + dt * 8 + 2 * t) =
                make_float2(acc[dt][2 * r] * p.scale, acc[dt][2 * r + 1] * p.scale);
        __syncwarp();
        add_dq_rows<Tr::kDqStride>(dq, bp.dq_row_stride, dq_row0, stage, dq_rows, min(Tr::kDqCols, p.head_dim - c0), c0,
                                   lane, dq_vec4);
      }
    }
    advance(hq, mb);  // again, rather than keep it in registers
  }

  cp_async_wait_all();  // a key tile that no query sees never waited for its K/V load

  store_dkdv(bp, b, kvh, key0, t, col_base, dk, dv);
}

// Deterministic dQ: one block per (query tile, head, batch) owning its rows; the scores and
// dP are recomputed once more (about 40% more backward FLOPs than the atomic path).
template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads) bwd_dq_kernel(const BwdParams bp, bool prefetch) {
  using T = typename Tr::T;
  const FwdParams& p = bp.fwd;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim, kS = Tr::kStride;
  constexpr int kNT = kBN / 8, kDT = kD / 8;
  RA_DYNAMIC_SMEM(smem);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sdO = sQ + kBM * kS;
  T* sK0 = sdO + kBM * kS;
  T* sV = sK0 + kBN * kS;
  T* sK1 = sV + kBN * kS;  // only with `prefetch`: kernel_traits.h
  auto sKs = [&](int buf) { return buf ? sK1 : sK0; };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (p.heads / p.kv_heads), m0 = blockIdx.x * kBM;
  const int64_t q_off = b * p.q_batch_stride + int64_t(m0) * p.q_row_stride + int64_t(h) * p.head_dim;
  const int64_t o_off = b * p.o_batch_stride + int64_t(m0) * p.o_row_stride + int64_t(h) * p.head_dim;
  load_tile<kBM, kD, Tr::kNThreads>(sQ, static_cast<const T*>(p.q) + q_off, p.q_row_stride, p.seq_q - m0, p.head_dim,
                                    p.vec_ok);
  load_tile<kBM, kD, Tr::kNThreads>(sdO, static_cast<const T*>(bp.dout) + o_off, p.o_row_stride, p.seq_q - m0,
                                    p.head_dim, p.vec_ok);
  cp_async_commit();

  const int row0 = m0 + warp * 16 + g;
  float lse2[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    const int64_t l = b * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + row;
    lse2[r] = row < p.seq_q ? lse_log2(p.lse[l]) : INFINITY;
    delta[r] = row < p.seq_q ? bp.delta[l] : 0.f;
  }
  const int n_blocks = key_tiles_seen<kCausal>(p, m0, kBM, kBN);
  const float scale_log2 = p.scale * kLog2e;
  // Packed sequences: this lane's rows' documents, and the keys' (read where masked).
  const int* doc_k = p.doc_q ? p.doc_k + b * p.doc_k_batch_stride : nullptr;
  int doc_row[2];
  lane_documents(p.doc_q, p.doc_q_batch_stride, b, row0, p.seq_q, doc_row);
  // ... and key tiles that share no document with this query tile are skipped.
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, true, m0, min(kBM, p.seq_q - m0), from, n_blocks, kBN);
  };
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + int64_t(kvh) * p.head_dim;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + int64_t(kvh) * p.head_dim;

  auto load_k = [&](int buf, int nb) {
    load_tile<kBN, kD, Tr::kNThreads>(sKs(buf), k + int64_t(nb) * kBN * p.k_row_stride, p.k_row_stride,
                                      p.seq_k - nb * kBN, p.head_dim, p.vec_ok);
  };
  int nb = next_tile(0);
  if (prefetch && nb < n_blocks) load_k(0, nb);
  cp_async_commit();

  // Per tile: V (needed after S = Q K^T, so it loads under that product) and the next K (with
  // `prefetch`; without, this tile's K loads here).
  float acc[kDT][4] = {};
  for (int buf = 0; nb < n_blocks; buf ^= int(prefetch)) {
    const int n0 = nb * kBN, nb_next = next_tile(nb + 1);
    __syncthreads();  // every warp is done with the previous V and K
    if (!prefetch) load_k(0, nb);
    cp_async_commit();
    load_tile<kBN, kD, Tr::kNThreads>(sV, v + int64_t(n0) * p.v_row_stride, p.v_row_stride, p.seq_k - n0, p.head_dim,
                                      p.vec_ok);
    cp_async_commit();
    if (prefetch && nb_next < n_blocks) load_k(buf ^ 1, nb_next);
    cp_async_commit();
    cp_async_wait<2>();  // Q and dO (first tile), and this tile's K
    __syncthreads();
    const T* sK = sKs(buf);

    const bool mixed = doc_k && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
    float s[kNT][4] = {}, dp[kNT][4] = {};
    warp_mma_nt<T, kD>(s, sQ + warp * 16 * kS, sK, kS, lane);
    cp_async_wait<1>();  // this tile's V
    __syncthreads();
    warp_mma_nt<T, kD>(dp, sdO + warp * 16 * kS, sV, kS, lane);
    if (tile_needs_mask<kCausal>(p, m0, n0, kBN, mixed)) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + nt * 8 + 2 * t + (e & 1), r = e >> 1;
          const bool masked = col >= p.seq_k || (kCausal && col > int64_t(row0 + 8 * r) + p.causal_offset) ||
                              (mixed && doc_k[col] != doc_row[r]);
          const float prob = masked ? 0.f : exp2f(s[nt][e] * scale_log2 - lse2[r]);
          s[nt][e] = prob * (dp[nt][e] - delta[r]);
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = exp2f(s[nt][e] * scale_log2 - lse2[e >> 1]) * (dp[nt][e] - delta[e >> 1]);
    }
    warp_mma_pb<T, kBN>(acc, s, sK, kS, lane);  // dQ += dS K
    nb = nb_next;
  }
  cp_async_wait_all();  // a query tile that sees no key never waited for its Q/dO load
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row >= p.seq_q) continue;
    float* dst = bp.dq_accum + b * bp.dq_batch_stride + int64_t(row) * bp.dq_row_stride + int64_t(h) * p.head_dim;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = dt * 8 + 2 * t + e;
        if (col < p.head_dim) dst[col] += acc[dt][2 * r + e] * p.scale;
      }
  }
}

}  // namespace ra::cuda::flash
