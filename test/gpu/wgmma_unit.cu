// One warpgroup, one wgmma of each form the Hopper kernels (native/cuda/flash/{fwd,bwd}_sm90_kernel.cuh)
// use, against the product on the host: wgmma_ss (A and B K-major in shared memory), wgmma_rs
// (A from registers, B MN-major) and wgmma_ss_tt (A and B MN-major), with the same blocked
// layout and descriptors as the kernels, and the accumulator read back through the fragment
// layout they assume. The inputs are small integers, so every sum is exact: the results must be
// equal, bit for bit. This tests on hardware what the CPU emulator can only take from our
// reading of the PTX ISA. Built and run by test/gpu/wgmma-unit.test.ts:
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. test/gpu/wgmma_unit.cu
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "native/cuda/flash/fwd_sm90_kernel.cuh"

using namespace ra::cuda::flash;
using T = __nv_bfloat16;

// a: 64 x 16, row-major. b: N x 16, row-major, so that B[k][n] = b[n][k] in every form. Each
// form that is compiled for this N (kForms: 1 ss, 2 rs, 4 ss_tt) writes its 64 x N result.
template <int N, int kForms>
__global__ void unit(const T* a, const T* b, float* d_ss, float* d_rs, float* d_tt) {
  __shared__ __align__(128) T sA[64 * 16], sAt[16 * 64], sB[N * 16], sBt[16 * N];
  const int tid = threadIdx.x, w = tid / 32, l = tid % 32;
  for (int i = tid; i < 64 * 16; i += 128) {
    sA[blocked<16>(i / 16, i % 16)] = a[i];   // K-major: rows m, 16 k
    sAt[blocked<64>(i % 16, i / 16)] = a[i];  // MN-major: rows k, 64 columns m
  }
  for (int i = tid; i < N * 16; i += 128) {
    sB[blocked<16>(i / 16, i % 16)] = b[i];   // K-major: rows n, 16 k
    sBt[blocked<N>(i % 16, i / 16)] = b[i];   // MN-major: rows k, N columns n
  }
  fence_proxy_async();
  __syncthreads();
  auto store = [&](float* d, const float* acc) {
    for (int i = 0; i < N / 2; ++i) d[(16 * w + l / 4 + 8 * ((i / 2) % 2)) * N + 8 * (i / 4) + 2 * (l % 4) + i % 2] = acc[i];
  };
  float acc[N / 2];

  if constexpr (kForms & 1) {
    fence_operands<N / 2>(acc);
    wgmma_fence();
    wgmma_ss<T, N>(acc, wgmma_desc(sA, 128, 16 * 16), wgmma_desc(sB, 128, 16 * 16), 0);
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<N / 2>(acc);
    store(d_ss, acc);
  }
  if constexpr (kForms & 2) {
    // The A fragment of mma.sync m16n8k16 per warp: register j holds row g + 8 (j % 2),
    // columns 2t + 8 (j / 2) and the next one.
    uint32_t fa[4];
    for (int j = 0; j < 4; ++j) {
      const int row = 16 * w + l / 4 + 8 * (j % 2), k = 2 * (l % 4) + 8 * (j / 2);
      __nv_bfloat162 h = __halves2bfloat162(a[row * 16 + k], a[row * 16 + k + 1]);
      fa[j] = *reinterpret_cast<uint32_t*>(&h);
    }
    fence_operands<N / 2>(acc);
    fence_operands<4>(fa);
    wgmma_fence();
    wgmma_rs<T, N>(acc, fa, wgmma_desc(sBt, N * 16, 128), 0);
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<N / 2>(acc);
    store(d_rs, acc);
  }
  if constexpr (kForms & 4) {
    fence_operands<N / 2>(acc);
    wgmma_fence();
    wgmma_ss_tt<T, N>(acc, wgmma_desc(sAt, 64 * 16, 128), wgmma_desc(sBt, N * 16, 128), 0);
    wgmma_commit();
    wgmma_wait_all();
    fence_operands<N / 2>(acc);
    store(d_tt, acc);
  }
}

template <int N, int kForms>
int run() {
  std::vector<T> a(64 * 16), b(N * 16);
  std::vector<float> af(a.size()), bf(b.size()), out[3];
  srand(N);
  for (size_t i = 0; i < a.size(); ++i) af[i] = float(rand() % 9 - 4), a[i] = __float2bfloat16(af[i]);
  for (size_t i = 0; i < b.size(); ++i) bf[i] = float(rand() % 9 - 4), b[i] = __float2bfloat16(bf[i]);
  T *da, *db;
  float* dd[3];
  cudaMalloc(&da, a.size() * sizeof(T)), cudaMalloc(&db, b.size() * sizeof(T));
  cudaMemcpy(da, a.data(), a.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), b.size() * sizeof(T), cudaMemcpyHostToDevice);
  for (auto& d : dd) cudaMalloc(&d, 64 * N * 4), cudaMemset(d, 0xff, 64 * N * 4);  // NaN where nothing is written
  unit<N, kForms><<<1, 128>>>(da, db, dd[0], dd[1], dd[2]);
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("FAIL N=%d: kernel failed: %s\n", N, cudaGetErrorString(e));
    return 1;
  }
  int failed = 0;
  const char* names[3] = {"wgmma_ss", "wgmma_rs", "wgmma_ss_tt"};
  for (int f = 0; f < 3; ++f) {
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
  cudaFree(da), cudaFree(db);
  for (auto d : dd) cudaFree(d);
  return failed;
}

// The (form, N) pairs the kernels use: ss at 64 and 128 (S, S^T, dP^T), rs at 64 and 128
// (P V, dV, dK), ss_tt at 32 and 64 (dQ).
int main() { return run<32, 4>() | run<64, 7>() | run<128, 3>(); }
