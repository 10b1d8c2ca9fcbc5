// A cache-blocked float32 matrix product in the BLIS shape. C is cut into MC x NC tiles,
// one parallel_for item each. An item walks K in KC slices: it packs its slice of A into
// MR-row panels and of B into NR-column panels (zero-padded at the edges, so one
// micro-kernel serves every size and every transposition), then runs an MR x NR
// register-blocked micro-kernel over them. Edge tiles compute padded rows and columns and
// store only the real ones. An element of C is always summed over k in the same order
// (k within a slice in a register, then slice after slice into C), whatever M, N, the
// tile it falls in or the thread count, so results are deterministic and a row has the
// same bits computed alone or with others.
//
// The micro-kernel is written with GCC/Clang vector extensions. On x86-64 an AVX2+FMA
// version (6 x 16) is chosen at run time when the CPU has it; the portable version (4 x 8)
// is what other CPUs run (SSE2 on x86-64, NEON on arm64).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../ops.h"
#include "../threads.h"
#include "../vec.h"

namespace ra::cpu::ops {

namespace {

typedef float v8 __attribute__((vector_size(32)));

constexpr int64_t KC = 256;  // k per slice: a B micro-panel (KC x NR) stays in L1
constexpr int64_t NC = 256;  // columns per tile: the packed B slice (KC x NC, 256 KB) stays in L2

struct Operands {
  int64_t M, N, K;
  const float* a;
  int64_t rsa, csa;
  const float* b;
  int64_t rsb, csb;
  float* c;
  int64_t ldc;
  bool accumulate;
};

// MR x (8*NV) block of C from panels ap (kc x MR) and bp (kc x 8*NV) into out, row-major.
template <int MR, int NV>
[[gnu::always_inline]] inline void micro_kernel(int64_t kc, const float* __restrict ap, const float* __restrict bp,
                                                float* __restrict out) {
  constexpr int NR = 8 * NV;
  v8 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = v8{};
  for (int64_t k = 0; k < kc; ++k) {
    v8 b[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], bp + k * NR + 8 * v, sizeof(v8));
    for (int r = 0; r < MR; ++r) {
      const float a = ap[k * MR + r];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(out + r * NR + 8 * v, &acc[r][v], sizeof(v8));
}

// One MC x NC tile of C, all of K.
template <int MR, int NV>
[[gnu::always_inline]] inline void tile(const Operands& g, int64_t i0, int64_t j0, int64_t mc, int64_t nc,
                                        float* apack, float* bpack) {
  constexpr int NR = 8 * NV;
  const int64_t mpanels = (mc + MR - 1) / MR, npanels = (nc + NR - 1) / NR;
  alignas(64) float out[MR * NR];
  for (int64_t k0 = 0; k0 < g.K; k0 += KC) {
    const int64_t kc = std::min(KC, g.K - k0);
    // pack A rows [i0, i0+mc) x k [k0, k0+kc) as panels of MR rows, k-major inside a panel
    for (int64_t p = 0; p < mpanels; ++p) {
      float* dst = apack + p * kc * MR;
      for (int r = 0; r < MR; ++r) {
        const int64_t i = i0 + p * MR + r;
        if (i < i0 + mc) {
          const float* src = g.a + i * g.rsa + k0 * g.csa;
          for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k * g.csa];
        } else {
          for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.f;
        }
      }
    }
    // pack B k [k0, k0+kc) x columns [j0, j0+nc) as panels of NR columns
    for (int64_t q = 0; q < npanels; ++q) {
      float* dst = bpack + q * kc * NR;
      const int64_t jn = std::min<int64_t>(NR, nc - q * NR);
      for (int64_t k = 0; k < kc; ++k) {
        const float* src = g.b + (k0 + k) * g.rsb + (j0 + q * NR) * g.csb;
        float* d = dst + k * NR;
        if (g.csb == 1) {
          std::memcpy(d, src, size_t(jn) * sizeof(float));
        } else {
          for (int64_t j = 0; j < jn; ++j) d[j] = src[j * g.csb];
        }
        for (int64_t j = jn; j < NR; ++j) d[j] = 0.f;
      }
    }
    const bool overwrite = k0 == 0 && !g.accumulate;
    for (int64_t q = 0; q < npanels; ++q) {
      const int64_t jn = std::min<int64_t>(NR, nc - q * NR);
      for (int64_t p = 0; p < mpanels; ++p) {
        const int64_t rn = std::min<int64_t>(MR, mc - p * MR);
        micro_kernel<MR, NV>(kc, apack + p * kc * MR, bpack + q * kc * NR, out);
        float* c = g.c + (i0 + p * MR) * g.ldc + j0 + q * NR;
        for (int64_t r = 0; r < rn; ++r) {
          float* cr = c + r * g.ldc;
          const float* o = out + r * NR;
          if (overwrite) {
            for (int64_t j = 0; j < jn; ++j) cr[j] = o[j];
          } else {
            for (int64_t j = 0; j < jn; ++j) cr[j] += o[j];
          }
        }
      }
    }
  }
}

template <int MR, int NV>
void run(const Operands& g, void (*tile_fn)(const Operands&, int64_t, int64_t, int64_t, int64_t, float*, float*)) {
  constexpr int64_t MC = 16 * MR;
  const int64_t mt = (g.M + MC - 1) / MC, nt = (g.N + NC - 1) / NC;
  parallel_for(mt * nt, [&](int64_t item) {
    const int64_t i0 = item / nt * MC, j0 = item % nt * NC;
    const int64_t mc = std::min(MC, g.M - i0), nc = std::min(NC, g.N - j0);
    const int64_t kc = std::min(KC, g.K);
    thread_local std::vector<float> apack, bpack;
    apack.resize(size_t((mc + MR - 1) / MR * MR * kc));
    bpack.resize(size_t((nc + 8 * NV - 1) / (8 * NV) * 8 * NV * kc));
    tile_fn(g, i0, j0, mc, nc, apack.data(), bpack.data());
  });
}

void tile_portable(const Operands& g, int64_t i0, int64_t j0, int64_t mc, int64_t nc, float* ap, float* bp) {
  tile<4, 1>(g, i0, j0, mc, nc, ap, bp);
}

#ifdef RA_CPU_AVX2
__attribute__((target("avx2,fma"))) void tile_avx2(const Operands& g, int64_t i0, int64_t j0, int64_t mc,
                                                   int64_t nc, float* ap, float* bp) {
  tile<6, 2>(g, i0, j0, mc, nc, ap, bp);
}
#endif

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b, int64_t rsb,
          int64_t csb, float* c, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, 0.f);
    return;
  }
  const Operands g{M, N, K, a, rsa, csa, b, rsb, csb, c, ldc, accumulate};
#ifdef RA_CPU_AVX2
  if (use_avx2_fma()) return run<6, 2>(g, tile_avx2);
#endif
  run<4, 1>(g, tile_portable);
}

void linear_forward(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N) {
  gemm(M, N, K, x, K, 1, w, 1, K, y, N, false);  // B(k, n) = w[n, k]
}

void linear_backward(const float* dy, const float* x, const float* w, float* dx, float* dw, int64_t M, int64_t K,
                     int64_t N) {
  if (dx) gemm(M, K, N, dy, N, 1, w, K, 1, dx, K, false);  // dx = dy w
  if (dw) gemm(N, K, M, dy, 1, N, x, K, 1, dw, K, true);   // dw += dy^T x
}

}  // namespace ra::cpu::ops
