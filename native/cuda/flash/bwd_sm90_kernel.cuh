// Backward for Hopper (sm_90a): the dK/dV kernel of bwd_kernel.cuh with its five products on
// warpgroup MMA (wgmma.cuh), warp-specialised as the forward is (fwd_sm90_kernel.cuh). One
// block per (128-key tile, kv head, batch): a producer warp loads K and V once, then the
// query steps (64 queries at head dim 128, 128 at 64) of every query head of the GQA group
// (Q and dO by TMA, lse and delta by its lanes) through kStages buffers handed over by
// mbarriers; two consumer warpgroups, each with 64 keys, so that dK/dV of a group sum in
// registers. Per query step:
//   S^T = K Q^T, then dP^T = V dO^T  (two batches; K, V, Q, dO read from shared memory)
//   P^T = exp(S^T - lse), masked, while dP^T's batch runs
//   dS^T = P^T (dP^T - delta);      dV += P^T dO, dK += dS^T Q  (P^T, dS^T from registers)
//   dQ = dS K, from dS^T in shared memory (two buffers, so that one named barrier per step
//   suffices) read as an MN-major A, over all 128 keys; each warpgroup 64 columns of the 64
//   queries at head dim 128, or all 64 columns of its half of the 128 queries at head dim 64.
// dK's and dQ's batches are issued back to back. Each warp stages its 16 rows of dQ (scaled) in
// shared memory and adds them into dq_accum with one bulk reduction per row (tma.cuh), which the
// TMA unit carries out while the warp goes on, in place of 32 atomics per thread and step.
// With `deterministic`, dQ is left to bwd_dq_kernel instead.
// Tiles TMA loads are 128-byte swizzled (tma.cuh); dS^T, stored by the consumers, is not.
// Head dims 64 and 128 with strides TMA can describe only (dispatch.cu).
#pragma once
#include "bwd_kernel.cuh"
#include "documents.cuh"
#include "flash.h"
#include "fwd_sm90_kernel.cuh"
#include "mma.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace ra::cuda::flash {

// The no-swizzle layout of dS^T (kD columns): core matrix (r / 8, c / 8) is 64 contiguous
// elements, its 8 rows 16 bytes apart, and core matrices of one row group follow each other
// along c. So stepping 8 columns is 128 bytes, stepping 8 rows kD * 16 bytes.
template <int kD>
__host__ __device__ __forceinline__ int blocked(int r, int c) {
  return ((r >> 3) * (kD / 8) + (c >> 3)) * 64 + (r & 7) * 8 + (c & 7);
}

template <int kHeadDim_, typename T_>
struct Sm90BwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = 2;  // warpgroups of 64 keys
  static constexpr int kNThreads = 128 * (1 + kConsumers);
  static constexpr int kBlockN = 64 * kConsumers;  // keys
  // Queries per step. At head dim 64, 128 (FlashAttention-3's choice there): twice the
  // products per step's waits and barriers, in registers the smaller dK/dV leave free, and dQ
  // split by rows between the warpgroups, so that no partial sums are reduced twice.
  static constexpr int kBlockM = kHeadDim == 64 ? 128 : 64;
  static constexpr int kStages = 2;
  static constexpr int kTileKV = kBlockN * kHeadDim, kTileQ = kBlockM * kHeadDim, kTileDs = kBlockN * kBlockM;  // elements
  // dQ = dS K per consumer warpgroup: 64 rows (wgmma's M) by 64 columns; the warpgroups
  // split the columns (head dim 128) or the rows (head dim 64, 128 queries).
  static constexpr int kDqRows = 64, kDqCols = 64;
  static constexpr bool kDqSplitRows = kBlockM == 2 * kDqRows;
  static_assert(kDqSplitRows ? kHeadDim == kDqCols : kBlockM == kDqRows && kHeadDim == 2 * kDqCols);
  // dQ's staging per consumer warpgroup, float32, rows 8 floats longer than 64, so that the
  // stores of a half-warp meet every bank once and each row stays a 16-byte aligned run for its
  // bulk reduction.
  static constexpr int kDqStride = kDqCols + 8, kTileDq = kDqRows * kDqStride;  // floats
  // K, V, then per stage Q and dO, two dS^T (each a multiple of 1024 bytes, so all stay
  // aligned for the swizzle), dQ's staging, then per stage lse and delta, then the barriers;
  // 1024 bytes more to align the start (align_1024): 198 KiB at head dim 128, 199 at 64.
  static constexpr int kDqOffset = (2 * kTileKV + 2 * kStages * kTileQ + 2 * kTileDs) * int(sizeof(T));
  static constexpr int kFloatsOffset = kDqOffset + kConsumers * kTileDq * int(sizeof(float));
  static constexpr int kBarrierOffset = kFloatsOffset + 2 * kStages * kBlockM * int(sizeof(float));
  static constexpr int kSmemBytes = kBarrierOffset + (1 + 2 * kStages) * 8 + 1024;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;  // as the forward's (Sm90FwdTraits)
  static_assert(kSmemBytes <= 227 * 1024, "past sm_90's opt-in shared memory per block");
};

// The tensor maps of q, k, v and dout, made on the host (launch_sm90.cuh, the emulator's test).
struct Sm90BwdMaps {
  TmaMap q, k, v, dout;
};
template <typename Tr>
inline Sm90BwdMaps sm90_bwd_maps(const BwdParams& bp) {
  const DType dtype = std::is_same_v<typename Tr::T, __half> ? DType::F16 : DType::BF16;
  return {tma_map(fwd_tma_shape(bp.fwd, 'q', Tr::kBlockM), dtype), tma_map(fwd_tma_shape(bp.fwd, 'k', Tr::kBlockN), dtype),
          tma_map(fwd_tma_shape(bp.fwd, 'v', Tr::kBlockN), dtype), tma_map(dout_tma_shape(bp, Tr::kBlockM), dtype)};
}

template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads, 1)
    bwd_sm90_kernel(const BwdParams bp, const __grid_constant__ Sm90BwdMaps maps, bool with_dq) {
#if defined(RA_FLASH_EMULATOR) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Tr::T;
  const FwdParams& p = bp.fwd;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim, kStages = Tr::kStages;
  constexpr int kMT = kBM / 8, kDT = kD / 8;
  static_assert(2 * kMT <= 32, "a lane's queries of a step are bits of one word (other_doc)");
  // Bytes between the core matrices of dS^T (blocked): along its columns, along its rows.
  constexpr uint32_t kSdsColStep = 128, kSdsRowStep = kBM * 16;
  RA_DYNAMIC_SMEM(smem_unaligned);
  unsigned char* smem = align_1024(smem_unaligned);
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + Tr::kTileKV;
  // Q and dO of stage st, dS^T buffer j: by arithmetic, as arrays of pointers would sit in local memory
  auto sQ = [&](int st) { return sV + Tr::kTileKV + st * Tr::kTileQ; };
  auto sdO = [&](int st) { return sV + Tr::kTileKV + (kStages + st) * Tr::kTileQ; };
  auto sdS = [&](int j) { return sV + Tr::kTileKV + 2 * kStages * Tr::kTileQ + j * Tr::kTileDs; };  // [key][query]
  float* sLse = reinterpret_cast<float*>(smem + Tr::kFloatsOffset);  // [kStages][kBM], log2-scaled
  float* sDelta = sLse + kStages * kBM;                                // [kStages][kBM]
  float* sDq = reinterpret_cast<float*>(smem + Tr::kDqOffset);  // [kConsumers][kDqRows][kDqStride]
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(smem + Tr::kBarrierOffset);
  uint64_t* full = kv_full + 1;       // [kStages]: the step's Q, dO, lse and delta are in
  uint64_t* empty = full + kStages;   // [kStages]: every consumer thread is done with them

  const int wg = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int kvh = blockIdx.y, b = blockIdx.z, n0 = blockIdx.x * kBN;
  const int group = p.heads / p.kv_heads;
  const int m_blocks = (p.seq_q + kBM - 1) / kBM;
  // Causal: query tiles that end before the first query seeing key n0 are skipped; with packed
  // sequences, so are those that share no document with this key tile. Both roles walk the same.
  const int m_begin = first_query_tile<kCausal>(p, n0, kBM, m_blocks);
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, false, n0, min(kBN, p.seq_k - n0), from, m_blocks, kBM);
  };

  // full: lane 0's arrival with the TMA bytes, and the other 31 lanes' after their lse and delta
  init_pipeline(kv_full, full, empty, kStages, 32, 128 * Tr::kConsumers);
  __syncthreads();  // the last block-wide barrier: the roles part here

  // The first of dQ's rows (of the step's queries) and columns that consumer warpgroup cw
  // computes.
  auto dq_row0 = [](int cw) { return Tr::kDqSplitRows ? cw * Tr::kDqRows : 0; };
  auto dq_col0 = [](int cw) { return Tr::kDqSplitRows ? 0 : cw * Tr::kDqCols; };

  if (wg == 0) {
    setmaxnreg_dec<Tr::kProducerRegs>();
    if (warp != 0) return;
    if (lane == 0) {
      mbar_arrive_expect_tx(kv_full, 2 * Tr::kTileKV * int(sizeof(T)));
      for (int c = 0; c < kD; c += kTmaBoxCols) {
        tma_load(sK + tma_tile<kBN>(0, c), &maps.k, kv_full, c, kvh, n0, b);
        tma_load(sV + tma_tile<kBN>(0, c), &maps.v, kv_full, c, kvh, n0, b);
      }
    }
    int i = 0;
    for (int hq = kvh * group; hq < (kvh + 1) * group; ++hq)
      for (int mb = next_tile(m_begin); mb < m_blocks; mb = next_tile(mb + 1), ++i) {
        const int st = i % kStages, m0 = mb * kBM;
        // This lane's lse and delta, read before the wait so that their trip to global memory
        // overlaps it.
        constexpr int kPerLane = kBM / 32;
        float lse_r[kPerLane], delta_r[kPerLane];
        const int64_t l_off = b * p.lse_batch_stride + int64_t(hq) * p.lse_head_stride + m0;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int r = lane + 32 * j;
          const bool in = m0 + r < p.seq_q;
          lse_r[j] = in ? lse_log2(p.lse[l_off + r]) : INFINITY;
          delta_r[j] = in ? bp.delta[l_off + r] : 0.f;
        }
        // Lane 0 alone waits by parity (see the forward). The warp's barrier orders the other
        // lanes' stores after its wait, and keeps them from arriving on full[st] for a later
        // use of the stage before this one's phase has completed (over-arrival).
        if (lane == 0) mbar_wait(&empty[st], ((i / kStages) & 1) ^ 1);
        __syncwarp();
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          sLse[st * kBM + lane + 32 * j] = lse_r[j];
          sDelta[st * kBM + lane + 32 * j] = delta_r[j];
        }
        if (lane == 0) {
          mbar_arrive_expect_tx(&full[st], 2 * Tr::kTileQ * int(sizeof(T)));
          for (int c = 0; c < kD; c += kTmaBoxCols) {
            tma_load(sQ(st) + tma_tile<kBM>(0, c), &maps.q, &full[st], c, hq, m0, b);
            tma_load(sdO(st) + tma_tile<kBM>(0, c), &maps.dout, &full[st], c, hq, m0, b);
          }
        } else {
          mbar_arrive(&full[st]);  // releases this lane's lse and delta
        }
      }
    return;
  }

  setmaxnreg_inc<Tr::kConsumerRegs>();
  const int cw = wg - 1;  // consumer warpgroup: keys [64 cw, 64 cw + 64) of the tile
  float dk[kDT][4] = {}, dv[kDT][4] = {};
  const float scale_log2 = p.scale * kLog2e;
  const int key0 = n0 + cw * 64 + warp * 16 + g;  // this lane's keys: key0 and key0 + 8
  // Packed sequences: the queries' documents (read where masked).
  const int* doc_q = p.doc_q ? p.doc_q + b * p.doc_q_batch_stride : nullptr;
  // Every consumer thread waits on every phase (none can fall one behind: see the forward).
  mbar_wait(kv_full, 0);  // always: the block must not end with its K/V copies in flight

  int i = 0;
  for (int hq = kvh * group; hq < (kvh + 1) * group; ++hq) {
    for (int mb = next_tile(m_begin); mb < m_blocks; mb = next_tile(mb + 1), ++i) {
      const int st = i % kStages, m0 = mb * kBM;
      const float* lse = sLse + st * kBM;
      const float* delta = sDelta + st * kBM;
      T* ds = sdS(i % 2);
      mbar_wait(&full[st], (i / kStages) & 1);

      // S^T = K Q^T, then dP^T = V dO^T, for this warpgroup's 64 keys: two batches, so that P^T
      // is computed while the second runs.
      float s[kMT][4], dp[kMT][4];
      fence_operands<kMT * 4>(&s[0][0]);
      fence_operands<kMT * 4>(&dp[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk)
        wgmma_ss<T, kBM>(&s[0][0], tile_desc_k<kBN>(sK, cw * 64, kk * 16), tile_desc_k<kBM>(sQ(st), 0, kk * 16), kk > 0);
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk)
        wgmma_ss<T, kBM>(&dp[0][0], tile_desc_k<kBN>(sV, cw * 64, kk * 16), tile_desc_k<kBM>(sdO(st), 0, kk * 16), kk > 0);
      wgmma_commit();
      wgmma_wait<1>();
      fence_operands<kMT * 4>(&s[0][0]);

      // P^T (0 where masked; element by element only where the tile needs it)
      const bool mixed = doc_q && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
      const bool need_mask = tile_needs_mask<kCausal>(p, m0, n0, kBN, mixed);
      // This lane's keys' documents, read here rather than held in registers across the loop
      // (at head dim 128 the consumers' 240 registers would spill); then which of its
      // queries' documents differ, a bit each (bit 2 mt + (e & 1) of other_doc[e >> 1]), in a
      // loop unrolled 4 ways only (4 loads in flight): unrolled fully, its 32 loads were hoisted
      // into registers, and the consumers spilled at head dim 64.
      int doc_key[2];
      lane_documents(mixed ? p.doc_k : nullptr, p.doc_k_batch_stride, b, key0, p.seq_k, doc_key);
      uint32_t other_doc[2] = {0, 0};
      if (mixed) {
#pragma unroll 4
        for (int j = 0; j < 2 * kMT; ++j) {
          const int q = m0 + (j >> 1) * 8 + 2 * t + (j & 1);
          const int d = q < p.seq_q ? doc_q[q] : doc_key[0];
          other_doc[0] |= uint32_t(q < p.seq_q && d != doc_key[0]) << j;
          other_doc[1] |= uint32_t(q < p.seq_q && d != doc_key[1]) << j;
        }
      }
      // Causal: query m0 + qi sees key0 when qi >= first_q, key0 + 8 when qi >= first_q + 8
      // (clamped to [-8, kBM], which keeps both tests exact, so that it fits an int).
      const int first_q = int(max(int64_t(-8), min(int64_t(kBM), int64_t(key0) - p.causal_offset - m0)));
      if (need_mask) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = key0 + (e >> 1) * 8, qi = mt * 8 + 2 * t + (e & 1);
            const bool masked = key >= p.seq_k || (kCausal && qi < first_q + (e >> 1) * 8) ||
                                (other_doc[e >> 1] >> (2 * mt + (e & 1)) & 1);
            s[mt][e] = masked ? 0.f : exp2f(s[mt][e] * scale_log2 - lse[qi]);
          }
      } else {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][e] = exp2f(s[mt][e] * scale_log2 - lse[mt * 8 + 2 * t + (e & 1)]);
      }

      // dS^T = P^T (dP^T - delta), in place of dP^T.
      wgmma_wait<0>();
      fence_operands<kMT * 4>(&dp[0][0]);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[mt][e] = s[mt][e] * (dp[mt][e] - delta[mt * 8 + 2 * t + (e & 1)]);

      // P^T and dS^T packed into A fragments (register j of pds[kk]: row g + 8 (j % 2), columns
      // 16 kk + 8 (j / 2) + 2t), then dV += P^T dO and dK += dS^T Q on the tensor cores while
      // dS^T is stored to shared memory for dQ. Both packed before dV's issue: with dP^T's float
      // registers live under dV's batch, ptxas serialised the batches at head dim 64 (C7512).
      // dO and Q are MN-major B operands (their rows, the queries, are k).
      uint32_t pa[kBM / 16][4], pds[kBM / 16][4];
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) acc_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk) acc_to_a<T>(pds[kk], dp[2 * kk], dp[2 * kk + 1]);
      fence_operands<kDT * 4>(&dv[0][0]);
      fence_operands<kBM / 16 * 4>(&pa[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs<T, kD>(&dv[0][0], pa[kk], tile_desc_mn<kBM>(sdO(st), kk * 16, 0), 1);
      wgmma_commit();
      if (with_dq) {
        const int r0 = cw * 64 + warp * 16 + g;
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            *reinterpret_cast<uint32_t*>(ds + blocked<kBM>(r0 + 8 * (j % 2), 16 * kk + 8 * (j / 2) + 2 * t)) = pds[kk][j];
      }
      fence_operands<kDT * 4>(&dk[0][0]);
      fence_operands<kBM / 16 * 4>(&pds[0][0]);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBM / 16; ++kk)
        wgmma_rs<T, kD>(&dk[0][0], pds[kk], tile_desc_mn<kBM>(sQ(st), kk * 16, 0), 1);
      wgmma_commit();
      wgmma_wait<1>();  // dV's batch: its P^T registers are free for dQ's accumulators
      fence_operands<kDT * 4>(&dv[0][0]);
      fence_operands<kBM / 16 * 4>(&pa[0][0]);

      // dQ = dS K: A = dS (queries x keys) read from dS^T as an MN-major operand, B = K read
      // as MN-major too, 64 columns of it (one swizzled box, so that every start lies on a box:
      // no public kernel starts an MN-major read inside one), over all keys. Head dim 128:
      // warpgroup cw computes columns [64 cw, 64 cw + 64); head dim 64: every column of queries
      // [64 cw, 64 cw + 64) of the step's 128 (an A that starts on a core matrix, as every
      // no-swizzle start does). Buffer i % 2 is not written again before every consumer has
      // passed the next step's barrier, so one barrier per step suffices.
      if (!with_dq) {
        wgmma_wait<0>();
        fence_operands<kDT * 4>(&dk[0][0]);
        fence_operands<kBM / 16 * 4>(&pds[0][0]);
        mbar_arrive(&empty[st]);  // Q, dO, lse and delta of the stage are read
        continue;
      }
      constexpr int kDqCols = Tr::kDqCols;
      fence_proxy_async();
      named_barrier_sync(1, 128 * Tr::kConsumers);  // all of dS^T is written and visible to wgmma
      float dq[kDqCols / 2];
      fence_operands<kDqCols / 2>(dq);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        wgmma_ss_tt<T, kDqCols>(dq, wgmma_desc(ds + blocked<kBM>(kk * 16, dq_row0(cw)), kSdsRowStep, kSdsColStep),
                                tile_desc_mn<kBN>(sK, kk * 16, dq_col0(cw)), kk > 0);
      wgmma_commit();
      wgmma_wait<1>();  // dK's batch
      fence_operands<kDT * 4>(&dk[0][0]);
      fence_operands<kBM / 16 * 4>(&pds[0][0]);
      mbar_arrive(&empty[st]);  // Q, dO, lse and delta of the stage are read

      // dQ (scaled) into this warp's 16 rows of its warpgroup's staging, once this warp's
      // reductions of the last step have read them; then one bulk reduction per row (lanes 0-15).
      wgmma_wait<0>();
      fence_operands<kDqCols / 2>(dq);
      if (lane < 16) bulk_wait_read_all();
      __syncwarp();
      float* dq_stage = sDq + cw * Tr::kTileDq;
#pragma unroll
      for (int e = 0; e < kDqCols / 2; e += 2) {
        const int row = warp * 16 + g + 8 * ((e >> 1) & 1), col = (e >> 2) * 8 + 2 * t;
        *reinterpret_cast<float2*>(dq_stage + row * Tr::kDqStride + col) = make_float2(dq[e] * p.scale, dq[e + 1] * p.scale);
      }
      fence_proxy_async();  // the stores made visible to the bulk reductions' reads
      __syncwarp();
      if (lane < 16) {
        const int row = warp * 16 + lane, q = m0 + dq_row0(cw) + row;
        if (q < p.seq_q)
          bulk_reduce_add(bp.dq_accum + b * bp.dq_batch_stride + int64_t(q) * bp.dq_row_stride +
                              int64_t(hq) * p.head_dim + dq_col0(cw),
                          dq_stage + row * Tr::kDqStride, kDqCols * sizeof(float));
        bulk_commit();
      }
    }
  }

  store_dkdv(bp, b, kvh, key0, t, 0, dk, dv);
  if (lane < 16) bulk_wait_all();  // the block's shared memory must outlive the reductions' reads
#elif defined(__CUDA_ARCH__)
  __trap();  // never launched here (dispatch.cu); if it were, fail loudly rather than write nothing
#endif
}

}  // namespace ra::cuda::flash
