// RMSNorm as Hugging Face's LlamaRMSNorm: y = w * x / sqrt(mean(x^2) + eps), in float32
// with the mean of squares accumulated in double.
#include <cmath>
#include <vector>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

void rmsnorm_forward(const float* x, const float* w, float eps, float* y, float* rstd, int64_t M, int64_t C) {
  for_chunks(M, row_grain(C), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xr = x + m * C;
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
      const float r = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
      rstd[m] = r;
      float* yr = y + m * C;
      for (int64_t c = 0; c < C; ++c) yr[c] = w[c] * (xr[c] * r);
    }
  });
}

// With r = rstd and s = sum_c dy_c w_c x_c:  dx_c = r * (w_c dy_c - x_c * r^2 * s / C).
void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd, float* dx, float* dw,
                      int64_t M, int64_t C) {
  for_chunks(M, row_grain(C), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float *xr = x + m * C, *gr = dy + m * C;
      const float r = rstd[m];
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += double(gr[c]) * w[c] * xr[c];
      const float k = float(s / double(C) * r * r);  // in double: r^2 s alone may overflow float32
      float* d = dx + m * C;
      for (int64_t c = 0; c < C; ++c) d[c] = r * (w[c] * gr[c] - xr[c] * k);
    }
  });
  // dw: split over columns, every row in order (deterministic, no races)
  for_chunks(C, 256, [&](int64_t c0, int64_t c1) {
    std::vector<float> acc(size_t(c1 - c0), 0.f);
    for (int64_t m = 0; m < M; ++m) {
      const float *xr = x + m * C, *gr = dy + m * C;
      const float r = rstd[m];
      for (int64_t c = c0; c < c1; ++c) acc[size_t(c - c0)] += gr[c] * (xr[c] * r);
    }
    for (int64_t c = c0; c < c1; ++c) dw[c] += acc[size_t(c - c0)];
  });
}

}  // namespace ra::cpu::ops
