// Compile-time tile shapes. Every warp owns 16 rows of the tile it iterates with (queries in
// the forward and the dQ pass, keys in the dK/dV pass), or in the forward kRowTiles such
// tiles, so a block's tile is 16 x warps (x kRowTiles).
// Shared memory rows are padded by 8 elements (see load_tile). Chosen so that the largest
// configuration fits the 99 KiB that sm_86/sm_89 allow per block; not yet tuned on a GPU.
#pragma once

namespace ra::cuda::flash {

template <int kHeadDim_, int kBlockN_, int kRowTiles_, typename T_>
struct FwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = 4;
  static constexpr int kNThreads = kNWarps * 32;
  // Each warp owns kRowTiles tiles of 16 query rows, 16 kNWarps rows apart, so that each K and V
  // fragment it reads from shared memory serves all of them (each mma.sync needs its B fragment):
  // against one row tile in 64 x 64 tiles, 0.56x the fragment reads per product in 128 x 64
  // tiles, 0.67x in 128 x 32. The cost: up to 255 registers, so 8 warps an SM.
  static constexpr int kRowTiles = kRowTiles_;
  static constexpr int kBlockM = 16 * kNWarps * kRowTiles;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kStride * int(sizeof(T));
};

// Two row tiles per warp up to head dim 128: 128 x 64 tiles at 64, 128 x 32 at 128 (with 64
// keys, ptxas spills in the causal kernels: 255 registers). 256: 64 x 32 and one row tile, which
// keeps the float32 output accumulator (16 x 256 per warp = 128 registers a lane) and the
// scores in registers.
template <int kHeadDim, typename T>
using FwdTraitsFor = FwdTraits<kHeadDim, (kHeadDim <= 64 ? 64 : 32), (kHeadDim <= 128 ? 2 : 1), T>;

// kDAcc: the dK/dV columns one pass accumulates in registers (two float32 16 x kDAcc tiles
// per warp). Head dim 256 runs the dK/dV kernel twice, once per half of the columns.
template <int kHeadDim_, int kNWarps_, typename T_>
struct BwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kNWarps = kNWarps_;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kBlockM = 16 * kNWarps;
  static constexpr int kBlockN = 16 * kNWarps;
  static constexpr int kDAcc = kHeadDim <= 128 ? kHeadDim : 128;
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kSdsStride = kBlockM + 8;
  // dQ's staging (dK/dV kernel): per warp 16 rows of the 32 columns a pass makes, float32, rows
  // 8 floats longer than 32 so that a half-warp's float2 stores meet every bank once and each
  // row stays 16-byte aligned; it lies from the Q buffer in use on (that Q and dO, or the second
  // Q buffer and the room after it), all free while dQ is made (bwd_kernel.cuh).
  static constexpr int kDqCols = 32, kDqStride = kDqCols + 8;
  static constexpr int kTileBytes = kBlockM * kStride * int(sizeof(T));  // Q or dO
  static constexpr int kStageBytes = kNWarps * 16 * kDqStride * int(sizeof(float));
  static_assert(kStageBytes <= 2 * kTileBytes);
  // dK/dV kernel: Q, dO (kBlockM rows), K, V (kBlockN rows), dS^T (kBlockN x kBlockM), lse and
  // delta twice; with `prefetch` (the next query tile's Q, lse and delta load while this one
  // computes), a second Q buffer after them, with room for the staging.
  static constexpr int kPlainSmemBytes = 2 * kTileBytes + 2 * kBlockN * kStride * int(sizeof(T)) +
                                         kBlockN * kSdsStride * int(sizeof(T)) + 4 * kBlockM * int(sizeof(float));
  static constexpr int kSmemBytes = kPlainSmemBytes + (kStageBytes > kTileBytes ? kStageBytes : kTileBytes);
  // The deterministic dQ kernel: Q, dO, K, V; with `prefetch` (the next key tile's K loads while
  // this one computes), a second K buffer after them.
  static constexpr int kDqPlainSmemBytes = (2 * kBlockM + 2 * kBlockN) * kStride * int(sizeof(T));
  static constexpr int kDqSmemBytes = kDqPlainSmemBytes + kBlockN * kStride * int(sizeof(T));
  static_assert(kSmemBytes <= 99 * 1024 && kDqSmemBytes <= 99 * 1024, "sm_86/sm_89 allow 99 KiB a block");
};

template <int kHeadDim, typename T>
using BwdTraitsFor = BwdTraits<kHeadDim, (kHeadDim <= 128 ? 4 : 2), T>;

}  // namespace ra::cuda::flash
