// One warpgroup, one wgmma of each form the Hopper forward (native/cuda/flash/fwd_sm90_kernel.cuh)
// uses, against the product on the host: wgmma_ss (A and B K-major in shared memory) and
// wgmma_rs (A from registers, B MN-major), with the same blocked layout and descriptors as the
// kernel, and the accumulator read back through the fragment layout the kernel assumes. The
// inputs are small integers, so every sum is exact: the results must be equal, bit for bit.
// This tests on hardware what the CPU emulator can only take from our reading of the PTX ISA.
// Built and run by test/gpu/wgmma-unit.test.ts:
//   nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -I. test/gpu/wgmma_unit.cu
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "native/cuda/flash/fwd_sm90_kernel.cuh"

using namespace ra::cuda::flash;
using T = __nv_bfloat16;

// a: 64 x 16, row-major. b: N x 16, row-major, so that B[k][n] = b[n][k] in both forms.
template <int N>
__global__ void unit(const T* a, const T* b, float* d_ss, float* d_rs) {
  __shared__ __align__(128) T sA[64 * 16], sB[N * 16], sBt[16 * N];
  const int tid = threadIdx.x, w = tid / 32, l = tid % 32;
  for (int i = tid; i < 64 * 16; i += 128) sA[blocked<16>(i / 16, i % 16)] = a[i];
  for (int i = tid; i < N * 16; i += 128) {
    sB[blocked<16>(i / 16, i % 16)] = b[i];   // K-major: rows n, 16 k
    sBt[blocked<N>(i % 16, i / 16)] = b[i];   // MN-major: rows k, N columns n
  }
  fence_proxy_async();
  __syncthreads();

  float acc[N / 2];
  fence_operands<N / 2>(acc);
  wgmma_fence();
  wgmma_ss<T, N>(acc, wgmma_desc(sA, 128, 16 * 16), wgmma_desc(sB, 128, 16 * 16), 0);
  wgmma_commit();
  wgmma_wait_all();
  fence_operands<N / 2>(acc);
  for (int i = 0; i < N / 2; ++i)
    d_ss[(16 * w + l / 4 + 8 * ((i / 2) % 2)) * N + 8 * (i / 4) + 2 * (l % 4) + i % 2] = acc[i];

  // The A fragment of mma.sync m16n8k16 per warp: register j holds row g + 8 (j % 2), columns
  // 2t + 8 (j / 2) and the next one.
  uint32_t fa[4];
  for (int j = 0; j < 4; ++j) {
    const int row = 16 * w + l / 4 + 8 * (j % 2), k = 2 * (l % 4) + 8 * (j / 2);
    __nv_bfloat162 h = __halves2bfloat162(a[row * 16 + k], a[row * 16 + k + 1]);
    fa[j] = *reinterpret_cast<uint32_t*>(&h);
  }
  float acc2[N / 2];
  fence_operands<N / 2>(acc2);
  fence_operands<4>(fa);
  wgmma_fence();
  wgmma_rs<T, N>(acc2, fa, wgmma_desc(sBt, N * 16, 128), 0);
  wgmma_commit();
  wgmma_wait_all();
  fence_operands<N / 2>(acc2);
  for (int i = 0; i < N / 2; ++i)
    d_rs[(16 * w + l / 4 + 8 * ((i / 2) % 2)) * N + 8 * (i / 4) + 2 * (l % 4) + i % 2] = acc2[i];
}

template <int N>
int run() {
  std::vector<T> a(64 * 16), b(N * 16);
  std::vector<float> af(a.size()), bf(b.size()), ss(64 * N), rs(64 * N);
  srand(N);
  for (size_t i = 0; i < a.size(); ++i) af[i] = float(rand() % 9 - 4), a[i] = __float2bfloat16(af[i]);
  for (size_t i = 0; i < b.size(); ++i) bf[i] = float(rand() % 9 - 4), b[i] = __float2bfloat16(bf[i]);
  T *da, *db;
  float *dss, *drs;
  cudaMalloc(&da, a.size() * sizeof(T)), cudaMalloc(&db, b.size() * sizeof(T));
  cudaMalloc(&dss, ss.size() * 4), cudaMalloc(&drs, rs.size() * 4);
  cudaMemcpy(da, a.data(), a.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), b.size() * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemset(dss, 0xff, ss.size() * 4), cudaMemset(drs, 0xff, rs.size() * 4);  // NaN where nothing is written
  unit<N><<<1, 128>>>(da, db, dss, drs);
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    printf("N=%d: kernel failed: %s\n", N, cudaGetErrorString(e));
    return 1;
  }
  cudaMemcpy(ss.data(), dss, ss.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(rs.data(), drs, rs.size() * 4, cudaMemcpyDeviceToHost);
  int bad_ss = 0, bad_rs = 0;
  for (int m = 0; m < 64; ++m)
    for (int n = 0; n < N; ++n) {
      float want = 0.f;
      for (int k = 0; k < 16; ++k) want += af[m * 16 + k] * bf[n * 16 + k];
      bad_ss += ss[m * N + n] != want;
      bad_rs += rs[m * N + n] != want;
    }
  printf("%s N=%d: wgmma_ss %d of %d wrong, wgmma_rs %d of %d wrong\n", bad_ss || bad_rs ? "FAIL" : "ok", N, bad_ss,
         64 * N, bad_rs, 64 * N);
  cudaFree(da), cudaFree(db), cudaFree(dss), cudaFree(drs);
  return bad_ss || bad_rs;
}

int main() { return run<64>() | run<128>(); }
