// SwiGLU feed-forward, y = down(silu(gate(x)) * up(x)), processed block_rows tokens at a
// time so the [tokens, F] activations exist only for one block. The backward recomputes
// gate and up per block instead of keeping them from the forward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

namespace {
inline float sigmoid(float g) { return 1.f / (1.f + std::exp(-g)); }
}  // namespace

void ffn_forward(const float* x, const float* w_gate, const float* w_up, const float* w_down, float* y, int64_t M,
                 int64_t C, int64_t F, int64_t block_rows) {
  const int64_t B = std::max<int64_t>(1, std::min(block_rows, M));
  std::vector<float> g(size_t(B * F)), u(size_t(B * F));
  for (int64_t r0 = 0; r0 < M; r0 += B) {
    const int64_t rows = std::min(B, M - r0);
    const float* xb = x + r0 * C;
    linear_forward(xb, w_gate, g.data(), rows, C, F);
    linear_forward(xb, w_up, u.data(), rows, C, F);
    for_chunks(rows * F, 1 << 14, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) g[size_t(i)] = g[size_t(i)] * sigmoid(g[size_t(i)]) * u[size_t(i)];
    });
    linear_forward(g.data(), w_down, y + r0 * C, rows, F, C);
  }
}

// With s = sigmoid(g), h = g s u:  dh = dy wDown;  du = dh g s;  dg = dh u s (1 + g (1 - s)).
void ffn_backward(const float* dy, const float* x, const float* w_gate, const float* w_up, const float* w_down,
                  float* dx, float* dw_gate, float* dw_up, float* dw_down, int64_t M, int64_t C, int64_t F,
                  int64_t block_rows) {
  const int64_t B = std::max<int64_t>(1, std::min(block_rows, M));
  std::vector<float> g(size_t(B * F)), u(size_t(B * F)), h(size_t(B * F));
  for (int64_t r0 = 0; r0 < M; r0 += B) {
    const int64_t rows = std::min(B, M - r0);
    const float *xb = x + r0 * C, *dyb = dy + r0 * C;
    linear_forward(xb, w_gate, g.data(), rows, C, F);
    linear_forward(xb, w_up, u.data(), rows, C, F);
    for_chunks(rows * F, 1 << 14, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) h[size_t(i)] = g[size_t(i)] * sigmoid(g[size_t(i)]) * u[size_t(i)];
    });
    // h is done with as an activation: dwDown += dy^T h, then h becomes dh = dy wDown
    gemm(C, F, rows, dyb, 1, C, h.data(), F, 1, dw_down, F, true);
    gemm(rows, F, C, dyb, C, 1, w_down, F, 1, h.data(), F, false);
    for_chunks(rows * F, 1 << 14, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float gv = g[size_t(i)], uv = u[size_t(i)], dh = h[size_t(i)], s = sigmoid(gv);
        g[size_t(i)] = dh * uv * s * (1.f + gv * (1.f - s));  // dg
        u[size_t(i)] = dh * gv * s;                           // du
      }
    });
    // dwGate += dg^T x, dwUp += du^T x; dx = dg wGate + du wUp
    gemm(F, C, rows, g.data(), 1, F, xb, C, 1, dw_gate, C, true);
    gemm(F, C, rows, u.data(), 1, F, xb, C, 1, dw_up, C, true);
    gemm(rows, C, F, g.data(), F, 1, w_gate, C, 1, dx + r0 * C, C, false);
    gemm(rows, C, F, u.data(), F, 1, w_up, C, 1, dx + r0 * C, C, true);
  }
}

}  // namespace ra::cpu::ops
