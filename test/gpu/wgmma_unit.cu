// One warpgroup, one wgmma of each form the Hopper kernels (native/cuda/flash/{fwd,bwd}_sm90_kernel.cuh)
// use, against the product on the host: wgmma_ss (A and B K-major in shared memory), wgmma_rs
// (A from registers, B MN-major) and wgmma_ss_tt (A and B MN-major), with the same layouts
// and descriptors as the kernels (the backward's no-swizzle `blocked`, and the 128-byte
// swizzled tiles TMA writes, tma.cuh), and the accumulator read back through the fragment
// layout they assume. The inputs are small integers, so every sum is exact: the results must
// be equal, bit for bit. Then a K tile as the kernels load it (two swizzled TMA boxes, rows
// past the sequence included) against the tensor on the host. This tests on hardware what the CPU emulator can only take
// from our reading of the PTX ISA and the driver's documentation. Built and run by
// test/gpu/wgmma-unit.test.ts:
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. test/gpu/wgmma_unit.cu native/cuda/flash/tma_map.cu
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "native/cuda/flash/bwd_sm90_kernel.cuh"
#include "native/cuda/flash/fwd_sm90_kernel.cuh"

using namespace ra::cuda::flash;
using T = __nv_bfloat16;

// a: 64 x 16, row-major. b: N x 16, row-major, so that B[k][n] = b[n][k] in every form. Each
// form that is compiled for this N (kForms: 1 ss, 2 rs, 4 ss_tt) writes its 64 x N result.
// The swizzled forms (kForms 8: ss, 16: rs, 32: ss_tt) read their operands as the kernels do
// from tiles as TMA writes them (tma_tile_at), 128 columns wide: A as rows 64..127 of a
// 128-row tile at columns 80..95 (the second box, 32 bytes in: the forward's S = Q K^T of
// consumer 1 at kk = 5), B as rows 0..N-1 of a tile at columns 80..95, the MN-major B of rs as
// rows 16..31 of a 32-row tile of N columns (at N = 128, two boxes: P V, dV, dK at kk = 1),
// and that of ss_tt as rows 16..31, columns N..2N-1 of a 32-row tile of 2N columns (the
// backward's dQ at head dim 128, the second warpgroup's half of K).
template <int N>
struct SwizzledTiles {
  static_assert(N % 64 == 0, "tiles of whole 64-column boxes");
  static constexpr int kQ = 128 * 128, kK = N * 128, kV = 32 * N, kKt = 32 * 2 * N;  // elements, each a multiple of 512
  static constexpr int kBytes = (kQ + kK + kV + kKt) * 2 + 1024;                   // and the alignment's slack
};
template <int N, int kForms>
__global__ void unit(const T* a, const T* b, float** d) {
  __shared__ __align__(128) T sA[64 * 16], sAt[16 * 64], sB[N * 16], sBt[16 * N];
  extern __shared__ __align__(128) unsigned char dyn[];
  using S = SwizzledTiles<N>;
  T* sQ = reinterpret_cast<T*>(align_1024(dyn));
  T *sK = sQ + S::kQ, *sV = sK + S::kK, *sKt = sV + S::kV;
  const int tid = threadIdx.x, w = tid / 32, l = tid % 32;
  for (int i = tid; i < 64 * 16; i += 128) {
    sA[blocked<16>(i / 16, i % 16)] = a[i];   // K-major: rows m, 16 k
    sAt[blocked<64>(i % 16, i / 16)] = a[i];  // MN-major: rows k, 64 columns m
    if constexpr (kForms & 8) sQ[tma_tile_at<128>(64 + i / 16, 80 + i % 16)] = a[i];
  }
  for (int i = tid; i < N * 16; i += 128) {
    sB[blocked<16>(i / 16, i % 16)] = b[i];   // K-major: rows n, 16 k
    sBt[blocked<N>(i % 16, i / 16)] = b[i];   // MN-major: rows k, N columns n
    if constexpr (kForms & 8) sK[tma_tile_at<N>(i / 16, 80 + i % 16)] = b[i];
    if constexpr (kForms & 16) sV[tma_tile_at<32>(16 + i % 16, i / 16)] = b[i];
    if constexpr (kForms & 32) sKt[tma_tile_at<32>(16 + i % 16, N + i / 16)] = b[i];
  }
  fence_proxy_async();
  __syncthreads();
  auto store = [&](float* d, const float* acc) {
    for (int i = 0; i < N / 2; ++i) d[(16 * w + l / 4 + 8 * ((i / 2) % 2)) * N + 8 * (i / 4) + 2 * (l % 4) + i % 2] = acc[i];
  };
  float acc[N / 2];
  // The A fragment of mma.sync m16n8k16 per warp: register j holds row g + 8 (j % 2),
  // columns 2t + 8 (j / 2) and the next one.
  uint32_t fa[4];
  for (int j = 0; j < 4; ++j) {
    const int row = 16 * w + l / 4 + 8 * (j % 2), k = 2 * (l % 4) + 8 * (j / 2);
    __nv_bfloat162 h = __halves2bfloat162(a[row * 16 + k], a[row * 16 + k + 1]);
    fa[j] = *reinterpret_cast<uint32_t*>(&h);
  }
  // One product of a form into `out`: form 0 ss, 1 rs (A from fa), 2 ss_tt.
  auto product = [&](int form, uint64_t desc_a, uint64_t desc_b, float* out) {
    fence_operands<N / 2>(acc);
    fence_operands<4>(fa);
    wgmma_fence();
    if (form == 0) wgmma_ss<T, N>(acc, desc_a, desc_b, 0);
    else if (form == 1) wgmma_rs<T, N>(acc, fa, desc_b, 0);
    else wgmma_ss_tt<T, N>(acc, desc_a, desc_b, 0);
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<N / 2>(acc);
    store(out, acc);
  };
  if constexpr (kForms & 1) product(0, wgmma_desc(sA, 128, 16 * 16), wgmma_desc(sB, 128, 16 * 16), d[0]);
  if constexpr (kForms & 2) product(1, 0, wgmma_desc(sBt, N * 16, 128), d[1]);
  if constexpr (kForms & 4) product(2, wgmma_desc(sAt, 64 * 16, 128), wgmma_desc(sBt, N * 16, 128), d[2]);
  // With the descriptors of the kernels (tile_desc_k, tile_desc_mn).
  if constexpr (kForms & 8) product(0, tile_desc_k<128>(sQ, 64, 80), tile_desc_k<N>(sK, 0, 80), d[3]);
  if constexpr (kForms & 16) product(1, 0, tile_desc_mn<32>(sV, 16, 0), d[4]);
  if constexpr (kForms & 32) product(2, wgmma_desc(sAt, 64 * 16, 128), tile_desc_mn<32>(sKt, 16, N), d[5]);
}

template <int N, int kForms>
int run() {
  std::vector<T> a(64 * 16), b(N * 16);
  std::vector<float> af(a.size()), bf(b.size()), out[6];
  srand(N);
  for (size_t i = 0; i < a.size(); ++i) af[i] = float(rand() % 9 - 4), a[i] = __float2bfloat16(af[i]);
  for (size_t i = 0; i < b.size(); ++i) bf[i] = float(rand() % 9 - 4), b[i] = __float2bfloat16(bf[i]);
  T *da, *db;
  float* dd[6];
  float** dlist;
  cudaMalloc(&da, a.size() * sizeof(T)), cudaMalloc(&db, b.size() * sizeof(T));
  cudaMemcpy(da, a.data(), a.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), b.size() * sizeof(T), cudaMemcpyHostToDevice);
  for (auto& d : dd) cudaMalloc(&d, 64 * N * 4), cudaMemset(d, 0xff, 64 * N * 4);  // NaN where nothing is written
  cudaMalloc(&dlist, sizeof dd);
  cudaMemcpy(dlist, dd, sizeof dd, cudaMemcpyHostToDevice);
  cudaFuncSetAttribute(unit<N, kForms>, cudaFuncAttributeMaxDynamicSharedMemorySize, SwizzledTiles<N>::kBytes);
  unit<N, kForms><<<1, 128, SwizzledTiles<N>::kBytes>>>(da, db, dlist);
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("FAIL N=%d: kernel failed: %s\n", N, cudaGetErrorString(e));
    return 1;
  }
  int failed = 0;
  const char* names[6] = {"wgmma_ss", "wgmma_rs", "wgmma_ss_tt", "wgmma_ss (swizzled)", "wgmma_rs (swizzled)", "wgmma_ss_tt (swizzled)"};
  for (int f = 0; f < 6; ++f) {
    if (!(kForms & (1 << f))) continue;
    out[f].resize(64 * N);
    cudaMemcpy(out[f].data(), dd[f], 64 * N * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < N; ++n) {
        float want = 0.f;
        for (int k = 0; k < 16; ++k) want += af[m * 16 + k] * bf[n * 16 + k];
        bad += out[f][m * N + n] != want;
      }
    printf("%s N=%d: %s %d of %d wrong\n", bad ? "FAIL" : "ok", N, names[f], bad, 64 * N);
    failed |= bad != 0;
  }
  cudaFree(da), cudaFree(db), cudaFree(dlist);
  for (auto d : dd) cudaFree(d);
  return failed;
}

// A K tile as the forward loads it: two boxes of 64 columns, 128 rows from row 40 of head 1
// of batch 1 of a [2, 100, 3, 128] tensor, so that rows 100 on are past the sequence and must
// land as zeros; the bytes complete on an mbarrier, as in the kernel. The tile is copied out
// as it lies in shared memory, swizzle and all.
constexpr int kTmaTileBytes = 128 * 128 * 2;
__global__ void tma_unit(const __grid_constant__ TmaMap map, T* out) {
  extern __shared__ __align__(128) unsigned char dyn[];
  T* tile = reinterpret_cast<T*>(align_1024(dyn));
  __shared__ __align__(8) uint64_t bar;
  if (threadIdx.x == 0) {
    mbar_init(&bar, 1);
    fence_mbar_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbar_arrive_expect_tx(&bar, kTmaTileBytes);
    for (int c = 0; c < 128; c += kTmaBoxCols) tma_load(tile + tma_tile<128>(0, c), &map, &bar, c, 1, 40, 1);
  }
  mbar_wait(&bar, 0);
  for (int i = threadIdx.x; i < 128 * 128; i += blockDim.x) out[i] = tile[i];
}

int run_tma() {
  const int B = 2, S = 100, H = 3, D = 128;
  std::vector<T> x(size_t(B) * S * H * D);
  for (size_t i = 0; i < x.size(); ++i) x[i] = __float2bfloat16(float(int(i % 251) - 125));
  T *dx, *dout;
  cudaMalloc(&dx, x.size() * sizeof(T)), cudaMalloc(&dout, kTmaTileBytes);
  cudaMemcpy(dx, x.data(), x.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemset(dout, 0xff, kTmaTileBytes);
  FwdParams p{};
  p.k = dx, p.batch = B, p.seq_k = S, p.kv_heads = H, p.head_dim = D;
  p.k_row_stride = H * D, p.k_batch_stride = int64_t(S) * H * D;
  TmaMap map;
  try {
    map = tma_map(fwd_tma_shape(p, 'k', 128), ra::DType::BF16);
  } catch (const std::exception& e) {
    printf("FAIL tma: %s\n", e.what());
    return 1;
  }
  cudaFuncSetAttribute(tma_unit, cudaFuncAttributeMaxDynamicSharedMemorySize, kTmaTileBytes + 1024);
  tma_unit<<<1, 128, kTmaTileBytes + 1024>>>(map, dout);
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("FAIL tma: kernel failed: %s\n", cudaGetErrorString(e));
    return 1;
  }
  std::vector<T> got(128 * 128);
  cudaMemcpy(got.data(), dout, got.size() * sizeof(T), cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c < D; ++c) {
      const float want = 40 + r < S ? __bfloat162float(x[((size_t(1) * S + 40 + r) * H + 1) * D + c]) : 0.f;
      bad += __bfloat162float(got[tma_tile_at<128>(r, c)]) != want;
    }
  printf("%s tma: tile of 128 x 128 (two swizzled boxes), %d of %d wrong\n", bad ? "FAIL" : "ok", bad, 128 * 128);
  cudaFree(dx), cudaFree(dout);
  return bad != 0;
}

// Bulk reductions as the backward adds dQ (bwd_sm90_kernel.cuh), in its pattern: each of 8
// blocks has 4 warps, each staging 16 rows of 64 floats, 72 apart, in shared memory; after
// fence.proxy.async and __syncwarp, lanes 0-15 add one row each into columns 64-127 of a
// [64, 128] float32 matrix; then wait_group.read, __syncwarp, and the next of 8 rounds rewrites
// the rows. Small integers, so the sums are exact in any order.
constexpr int kRedBlocks = 8, kRedRounds = 8, kRedRows = 64, kRedStride = 72;
__global__ void reduce_unit(float* dst) {
  __shared__ __align__(16) float stage[kRedRows * kRedStride];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int round = 0; round < kRedRounds; ++round) {
    if (lane < 16) bulk_wait_read_all();
    __syncwarp();
    for (int i = lane; i < 16 * 64; i += 32) {
      const int r = warp * 16 + i / 64, c = i % 64;
      stage[r * kRedStride + c] = float((blockIdx.x + 1) * (round + 1) + (r * 64 + c) % 7);
    }
    fence_proxy_async();
    __syncwarp();
    if (lane < 16) {
      const int r = warp * 16 + lane;
      bulk_reduce_add(dst + r * 128 + 64, stage + r * kRedStride, 64 * sizeof(float));
      bulk_commit();
    }
  }
  if (lane < 16) bulk_wait_all();
}

int run_reduce() {
  float* d;
  cudaMalloc(&d, kRedRows * 128 * sizeof(float));
  cudaMemset(d, 0, kRedRows * 128 * sizeof(float));
  reduce_unit<<<kRedBlocks, 128>>>(d);
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("FAIL bulk reduce: kernel failed: %s\n", cudaGetErrorString(e));
    return 1;
  }
  std::vector<float> got(kRedRows * 128);
  cudaMemcpy(got.data(), d, got.size() * sizeof(float), cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int r = 0; r < kRedRows; ++r)
    for (int c = 0; c < 128; ++c) {
      float want = 0;
      if (c >= 64)
        for (int b = 0; b < kRedBlocks; ++b)
          for (int round = 0; round < kRedRounds; ++round) want += float((b + 1) * (round + 1) + (r * 64 + c - 64) % 7);
      bad += got[r * 128 + c] != want;
    }
  printf("%s bulk reduce: %d blocks x %d rounds into a 64 x 128 matrix, %d of %d wrong\n", bad ? "FAIL" : "ok", kRedBlocks,
         kRedRounds, bad, kRedRows * 128);
  cudaFree(d);
  return bad != 0;
}

// The (form, N) pairs the kernels use: ss at 64 and 128 (S, S^T, dP^T), rs at 64 and 128
// (P V, dV, dK), ss_tt at 64 (dQ), each in the layouts they read.
int main() { return run<64, 7 | 8 | 16 | 32>() | run<128, 3 | 8 | 16>() | run_tma() | run_reduce(); }
