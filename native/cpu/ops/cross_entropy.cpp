// The LM head fused with cross-entropy: chunk_rows tokens at a time, the chunk's logits
// [chunk_rows, V] are computed once, reduced to a log-sum-exp per row, and (for the
// backward) turned in place into dlogits = grad_scale * (softmax - onehot), which feeds dh
// and dwHead before the next chunk reuses the buffer. [M, V] never exists.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

CrossEntropyResult cross_entropy(const float* h, const float* w_head, const int32_t* targets, int64_t M, int64_t C,
                                 int64_t V, int64_t chunk_rows, int32_t ignore_index, float grad_scale, float* dh,
                                 float* dw_head) {
  const int64_t R = std::max<int64_t>(1, std::min(chunk_rows, M));
  const bool grads = dh || dw_head;
  std::vector<float> logits(size_t(R * V));
  std::vector<double> row_loss(static_cast<size_t>(R));
  CrossEntropyResult res{0.0, 0};
  for (int64_t r0 = 0; r0 < M; r0 += R) {
    const int64_t rows = std::min(R, M - r0);
    const float* hb = h + r0 * C;
    linear_forward(hb, w_head, logits.data(), rows, C, V);
    for_chunks(rows, std::max<int64_t>(1, row_grain(V) / 4), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* l = logits.data() + i * V;
        const int32_t t = targets[r0 + i];
        if (t == ignore_index) {
          row_loss[size_t(i)] = 0;
          if (grads) std::fill(l, l + V, 0.f);
          continue;
        }
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < V; ++j) mx = std::max(mx, l[j]);
        double sum = 0;
        for (int64_t j = 0; j < V; ++j) sum += std::exp(double(l[j] - mx));
        const double lse = double(mx) + std::log(sum);
        row_loss[size_t(i)] = lse - double(l[t]);
        if (grads) {
          // exp((l - mx) - log(sum)), not exp(l - float(lse)): lse rounded to float32 would scale
          // every probability by up to 2^-24 |lse| (3e-4 at logits of 1e4).
          const float log_sum = float(std::log(sum));
          for (int64_t j = 0; j < V; ++j) l[j] = grad_scale * std::exp((l[j] - mx) - log_sum);
          l[t] -= grad_scale;
        }
      }
    });
    for (int64_t i = 0; i < rows; ++i) {
      if (targets[r0 + i] == ignore_index) continue;
      res.loss_sum += row_loss[size_t(i)];
      ++res.count;
    }
    if (dh) gemm(rows, C, V, logits.data(), V, 1, w_head, C, 1, dh + r0 * C, C, false);          // dh = dl wHead
    if (dw_head) gemm(V, C, rows, logits.data(), 1, V, hb, C, 1, dw_head, C, true);               // dwHead += dl^T h
  }
  return res;
}

}  // namespace ra::cpu::ops
