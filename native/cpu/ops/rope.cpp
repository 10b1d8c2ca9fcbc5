// Rotary position embedding, Hugging Face LLaMA convention (rotate_half): the pairs are
// (i, i + D/2), not adjacent elements.
//
// Angles are computed in double: angle = pos * inv_freq[i] (inv_freq[i] = theta^(-2i/D),
// possibly rescaled, computed in double by the caller), then cos/sin rounded to float32. Hugging Face computes inv_freq and pos * inv_freq in
// float32; at position 1M the high-frequency angles are then off by up to ~0.03 rad
// (half a float32 ulp of 1e6), and by 2^-24 relative at any position. Positions here are
// arbitrary per token (zigzag shards hold blocks far apart), and the attention score
// should depend only on the distance between two tokens, which exact angles keep at any
// position. We therefore choose double: the true rotation to float32 rounding of cos/sin,
// equal to HF's float32 result to ~1e-6 at small positions and differing from it by HF's
// own rounding at large ones.
#include <cmath>
#include <vector>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

void rope(const float* x, const int32_t* positions, float* out, int64_t M, int64_t H, int64_t D,
          const double* inv_freq, bool inverse) {
  const int64_t half = D / 2;
  for_chunks(M, row_grain(H * D), [&](int64_t m0, int64_t m1) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t m = m0; m < m1; ++m) {
      const double pos = double(positions[m]);
      for (int64_t i = 0; i < half; ++i) {
        const double a = pos * inv_freq[i];
        cs[size_t(i)] = float(std::cos(a));
        sn[size_t(i)] = inverse ? -float(std::sin(a)) : float(std::sin(a));  // R(-a) = R(a)^T
      }
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = x + (m * H + h) * D;
        float* o = out + (m * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const float a = xr[i], b = xr[i + half], c = cs[size_t(i)], s = sn[size_t(i)];
          o[i] = a * c - b * s;         // x * cos + (-x[D/2:]) * sin
          o[i + half] = b * c + a * s;  // x * cos + x[:D/2] * sin
        }
      }
    }
  });
}

}  // namespace ra::cpu::ops
