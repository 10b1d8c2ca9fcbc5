// Forward for Hopper (sm_90a), warp-specialised as FlashAttention-3 is: one producer warp
// streams tiles into shared memory with TMA (tma.cuh) while two consumer warpgroups multiply
// on warpgroup MMA (wgmma.cuh). One block per (128-query tile, head, batch): warpgroup 0
// produces, warpgroups 1 and 2 each own 64 query rows. Q arrives once; K and V tiles pass
// through kStages buffers each, every buffer with a "full" mbarrier (the TMA bytes are in) and
// an "empty" one (both consumer warpgroups are done with it), so the producer refills a buffer
// as soon as it is free, without a block-wide barrier. K and V have barriers of their own
// because they are done with at different times (below). The producer gives up registers
// (setmaxnreg) so that the consumers can hold S, P and O at head dim 128 without spilling.
//
// Per 128-key tile, S = Q K^T is one batch of wgmma with both operands in shared memory, and
// O += P V another, P straight from the score registers and V read as an MN-major operand,
// so no tile is ever transposed. The two overlap within a warpgroup as in FlashAttention-3
// (its "intra-warpgroup pipelining"): the scores of tile j+1 and the product P_j V_j are in
// flight together, and the softmax of tile j+1 runs while P_j V_j still is; only then is O
// rescaled to the new row maxima and P_{j+1} formed. Masking, the softmax step and the
// epilogue are online_softmax.cuh's; packed sequences skip the key tiles that share no
// document, as fwd_kernel.cuh does (producer and consumers walk the same tiles).
//
// Across the two warpgroups, ping-pong as in FlashAttention-3: they take turns to issue their
// products, so that one's softmax runs while the other's products hold the tensor cores.
// launch_sm90.cuh turns it off with RING_ATTENTION_SM90_PINGPONG=0, so that a GPU run can
// measure what it gains. Tiles are in TMA's 128-byte-swizzled layout (tma.cuh), which wgmma
// reads as it is. Used only where it applies (dispatch.cu): head dim 64 or 128, 16-byte
// aligned rows and strides TMA can describe; otherwise fwd_kernel.cuh runs.
#pragma once
#include <type_traits>

#include "documents.cuh"
#include "flash.h"
#include "mma.cuh"
#include "online_softmax.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace ra::cuda::flash {

template <int kHeadDim_, typename T_>
struct Sm90FwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumers = 2;                   // warpgroups of 64 query rows
  static constexpr int kNThreads = 128 * (1 + kConsumers);
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kBlockN = 128;
  static constexpr int kStages = 2;
  static constexpr int kTileQ = kBlockM * kHeadDim, kTileKV = kBlockN * kHeadDim;  // elements
  // Q once, K and V per stage (each tile a multiple of 1024 bytes, so all stay aligned for the
  // swizzle), then the barriers; 1024 bytes more to align the start (align_1024): 161 KiB at
  // head dim 128, within sm_90's 227 KiB.
  static constexpr int kBarrierOffset = (kTileQ + 2 * kStages * kTileKV) * int(sizeof(T));
  static constexpr int kSmemBytes = kBarrierOffset + (1 + 4 * kStages) * 8 + 1024;
  // Registers per thread after setmaxnreg: 128 x 24 + 256 x 240 = 384 x 168, what the launch
  // allocates (__launch_bounds__); more for the consumers would make their setmaxnreg wait forever.
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
};

// The tensor maps of q, k and v, made on the host (launch_sm90.cuh, the emulator's test).
struct Sm90FwdMaps {
  TmaMap q, k, v;
};
template <typename Tr>
inline Sm90FwdMaps sm90_fwd_maps(const FwdParams& p) {
  const DType dtype = std::is_same_v<typename Tr::T, __half> ? DType::F16 : DType::BF16;
  return {tma_map(fwd_tma_shape(p, 'q', Tr::kBlockM), dtype), tma_map(fwd_tma_shape(p, 'k', Tr::kBlockN), dtype),
          tma_map(fwd_tma_shape(p, 'v', Tr::kBlockN), dtype)};
}

template <typename Tr, bool kCausal>
__global__ void __launch_bounds__(Tr::kNThreads, 1)
    fwd_sm90_kernel(const FwdParams p, const __grid_constant__ Sm90FwdMaps maps, bool pingpong) {
  // Other architectures of a fat binary get an empty kernel; dispatch.cu launches this one
  // only on sm_90 devices of a build that has sm_90a code.
#if defined(RA_FLASH_EMULATOR) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Tr::T;
  constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kD = Tr::kHeadDim, kStages = Tr::kStages;
  constexpr int kNT = kBN / 8, kDT = kD / 8;
  RA_DYNAMIC_SMEM(smem_unaligned);
  unsigned char* smem = align_1024(smem_unaligned);
  T* sQ = reinterpret_cast<T*>(smem);
  // K and V of stage st, by arithmetic: an array of pointers would sit in local memory
  auto sK = [&](int st) { return sQ + Tr::kTileQ + st * Tr::kTileKV; };
  auto sV = [&](int st) { return sQ + Tr::kTileQ + (kStages + st) * Tr::kTileKV; };
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + Tr::kBarrierOffset);
  // [2 kStages] each, K's stages then V's (init_pipeline sets them up as one run): "full", the
  // stage's tile has landed; "empty", every consumer thread is done with it.
  uint64_t* full = q_full + 1;
  uint64_t* empty = full + 2 * kStages;
  uint64_t *k_full = full, *v_full = full + kStages, *k_empty = empty, *v_empty = empty + kStages;

  const int wg = threadIdx.x / 128, warp = threadIdx.x % 128 / 32, lane = threadIdx.x % 32, t = lane % 4;
  // Causal: the longest tiles (last queries) first, so that the tail of the grid is short.
  const int m_block = kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (p.heads / p.kv_heads);
  const int m0 = m_block * kBM;
  // Key tiles past the diagonal of this query tile are never loaded; with packed sequences,
  // neither are those that share no document with it. Producer and consumers walk the same.
  const int n_blocks = key_tiles_seen<kCausal>(p, m0, kBM, kBN);
  auto next_tile = [&](int from) {
    return next_tile_with_documents(p, b, true, m0, min(kBM, p.seq_q - m0), from, n_blocks, kBN);
  };

  init_pipeline(q_full, full, empty, 2 * kStages, 1, 128 * Tr::kConsumers);
  __syncthreads();  // the last block-wide barrier: the roles part here

  if (wg == 0) {
    setmaxnreg_dec<Tr::kProducerRegs>();
    if (warp != 0) return;
    // The warp walks the tiles (next_tile is a warp's ballot); lane 0 alone waits and issues
    // the copies. A parity wait is sound only for a waiter that cannot fall a whole phase
    // behind: lane 0 cannot (each phase of an `empty` needs a tile it issued after its last
    // wait), but another lane could, and would then wait for the phase after next.
    if (lane == 0) {
      mbar_arrive_expect_tx(q_full, Tr::kTileQ * int(sizeof(T)));
      for (int c = 0; c < kD; c += kTmaBoxCols) tma_load(sQ + tma_tile<kBM>(0, c), &maps.q, q_full, c, h, m0, b);
    }
    // Tile i (key tile nb) into its stage, once the stage's tile before it is consumed. K runs
    // one tile ahead of V, in the order the consumers use them.
    auto load = [&](bool v, int i, int nb) {
      const int st = i % kStages;
      uint64_t* landed = v ? &v_full[st] : &k_full[st];
      mbar_wait(v ? &v_empty[st] : &k_empty[st], ((i / kStages) & 1) ^ 1);
      mbar_arrive_expect_tx(landed, Tr::kTileKV * int(sizeof(T)));
      for (int c = 0; c < kD; c += kTmaBoxCols)
        tma_load((v ? sV(st) : sK(st)) + tma_tile<kBN>(0, c), v ? &maps.v : &maps.k, landed, c, kvh, nb * kBN, b);
    };
    int i = 0, prev = 0;
    for (int nb = next_tile(0); nb < n_blocks; prev = nb, nb = next_tile(nb + 1), ++i) {
      if (lane == 0) {
        load(false, i, nb);
        if (i > 0) load(true, i - 1, prev);
      }
      __syncwarp();
    }
    if (lane == 0 && i > 0) load(true, i - 1, prev);
    return;
  }

  setmaxnreg_inc<Tr::kConsumerRegs>();
  const int cw = wg - 1;  // consumer warpgroup: query rows [64 cw, 64 cw + 64) of the tile
  float acc[kDT][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const float scale_log2 = p.scale * kLog2e;
  const int row0 = m0 + cw * 64 + warp * 16 + lane / 4;  // this lane's query rows: row0 and row0 + 8
  // Packed sequences: this lane's rows' documents, and the keys' (read where masked).
  const int* doc_k = p.doc_q ? p.doc_k + b * p.doc_k_batch_stride : nullptr;
  int doc_row[2];
  lane_documents(p.doc_q, p.doc_q_batch_stride, b, row0, p.seq_q, doc_row);
  // Every consumer thread waits on every phase: none can fall a phase behind, since the next
  // phase of a stage's `full` needs the `empty` arrival of each of them.
  mbar_wait(q_full, 0);  // always: the block must not end with its Q copy in flight

  // S = Q K^T of the tile in K's stage st, into s (the first product overwrites it).
  float s[kNT][4];
  auto issue_scores = [&](int st) {
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
      wgmma_ss<T, kBN>(&s[0][0], tile_desc_k<kBM>(sQ, cw * 64, kk * 16), tile_desc_k<kBN>(sK(st), 0, kk * 16), kk > 0);
    wgmma_commit();
  };
  // O += P V of the tile in V's stage st; rows of V are the k index (MN-major B).
  uint32_t pa[kBN / 16][4];
  auto issue_pv = [&](int st) {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) wgmma_rs<T, kD>(&acc[0][0], pa[kk], tile_desc_mn<kBN>(sV(st), kk * 16, 0), 1);
    wgmma_commit();
  };
  // The scores of key tile nb become P: masked where needed (only the ragged last tile, tiles
  // crossing the diagonal and tiles holding several documents), exponentiated; corr rescales O.
  float corr[2];
  auto softmax_tile = [&](int nb) {
    const int n0 = nb * kBN;
    const bool mixed = doc_k && mixed_documents(p, b, m0, min(kBM, p.seq_q - m0), n0, min(kBN, p.seq_k - n0));
    if (tile_needs_mask<kCausal>(p, m0, n0, kBN, mixed))
      mask_scores<kCausal>(s, p, n0, row0, t, mixed ? doc_k : nullptr, doc_row);
    softmax_scores(s, row_max, row_sum, scale_log2, corr);
  };
  auto scores_to_a = [&] {
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) acc_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
  };
  auto fence_all = [&] {
    fence_operands<kNT * 4>(&s[0][0]);
    fence_operands<kDT * 4>(&acc[0][0]);
    fence_operands<kBN / 16 * 4>(&pa[0][0]);
  };

  // Ping-pong (FlashAttention-3), unless turned off: the two consumer warpgroups take turns to
  // issue their products, so that one's softmax runs while the other's products hold the
  // tensor cores. Named barrier 1 + cw opens warpgroup cw's turn: it waits there for the other
  // warpgroup's 128 arrivals (warpgroup 0's first turn: its own), issues, and opens the
  // other's. Both walk the same tiles, so turns pair up; warpgroup 1 does not open a turn
  // after its last, so that no barrier is left half arrived at.
  // (Barrier ids as constants: ptxas reserves all 16 for an id it cannot see.)
  auto take_turn = [&] {
    if (pingpong) cw == 0 ? named_barrier_sync(1, 256) : named_barrier_sync(2, 256);
  };
  auto pass_turn = [&](bool last) {
    if (pingpong && !(last && cw == 1)) cw == 0 ? named_barrier_arrive(2, 256) : named_barrier_arrive(1, 256);
  };

  int nb = next_tile(0);
  if (nb < n_blocks) {
    if (pingpong && cw == 0) named_barrier_arrive(1, 256);
    mbar_wait(&k_full[0], 0);
    fence_all();
    take_turn();
    wgmma_fence();
    issue_scores(0);
    pass_turn(false);
    wgmma_wait<0>();
    fence_all();
    mbar_arrive(&k_empty[0]);
    softmax_tile(nb);  // O is still 0: nothing to rescale
    scores_to_a();
    // Tile i's P is in pa; its V has still to be multiplied in.
    int i = 0;
    for (int next = next_tile(nb + 1); next < n_blocks; next = next_tile(next + 1), ++i) {
      const int st = i % kStages, st_next = (i + 1) % kStages;
      mbar_wait(&k_full[st_next], ((i + 1) / kStages) & 1);
      mbar_wait(&v_full[st], (i / kStages) & 1);
      fence_all();
      take_turn();
      wgmma_fence();
      issue_scores(st_next);
      issue_pv(st);
      pass_turn(false);
      wgmma_wait<1>();  // the scores are in; P V may still be in flight
      fence_operands<kNT * 4>(&s[0][0]);
      mbar_arrive(&k_empty[st_next]);
      softmax_tile(next);
      wgmma_wait<0>();  // P V is in: O and pa may be touched again
      fence_all();
      mbar_arrive(&v_empty[st]);
      rescale_output(acc, corr);
      scores_to_a();
    }
    const int st = i % kStages;
    mbar_wait(&v_full[st], (i / kStages) & 1);
    fence_all();
    take_turn();
    wgmma_fence();
    issue_pv(st);
    pass_turn(true);
    wgmma_wait<0>();
    fence_all();
    mbar_arrive(&v_empty[st]);
  }

  store_forward<T>(p, b, h, row0, t, acc, row_max, row_sum);
#elif defined(__CUDA_ARCH__)
  __trap();  // never launched here (dispatch.cu); if it were, fail loudly rather than write nothing
#endif
}

}  // namespace ra::cuda::flash
