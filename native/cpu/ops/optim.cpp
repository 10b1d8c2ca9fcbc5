// AdamW and the elementwise utilities of a training step (gradient-norm clipping,
// zeroing, accumulation).
#include <cmath>
#include <vector>

#include "../ops.h"
#include "chunks.h"

namespace ra::cpu::ops {

namespace {
constexpr int64_t GRAIN = 1 << 15;
}

// torch.optim.AdamW (amsgrad=False, maximize=False), the single-tensor formula; the bias
// corrections are computed in double once per call.
void adamw(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step, float lr, float beta1,
           float beta2, float eps, float weight_decay) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(step));
  const double bc2 = 1.0 - std::pow(double(beta2), double(step));
  const float step_size = float(double(lr) / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  const float lr_wd = float(double(lr) * weight_decay);  // joins the update unrounded (see optim.cuh)
  for_chunks(n, GRAIN, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float g = grad[i];
      const float mi = beta1 * m[i] + (1.f - beta1) * g;
      const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
      m[i] = mi;
      v[i] = vi;
      const float denom = std::sqrt(vi) / bc2_sqrt + eps;
      param[i] = param[i] - (lr_wd * param[i] + step_size * (mi / denom));
    }
  });
}

double sum_of_squares(const float* x, int64_t n) {
  const int64_t chunks = (n + GRAIN - 1) / GRAIN;
  std::vector<double> partial(size_t(std::max<int64_t>(chunks, 1)), 0.0);
  for_chunks(n, GRAIN, [&](int64_t i0, int64_t i1) {
    double s = 0;
    for (int64_t i = i0; i < i1; ++i) s += double(x[i]) * double(x[i]);
    partial[size_t(i0 / GRAIN)] = s;
  });
  double total = 0;
  for (double p : partial) total += p;  // in chunk order: deterministic
  return total;
}

void scale(float* x, int64_t n, float s) {
  for_chunks(n, GRAIN, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] *= s;
  });
}

void add(float* a, const float* b, int64_t n) {
  for_chunks(n, GRAIN, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) a[i] += b[i];
  });
}

void zero(float* x, int64_t n) {
  for_chunks(n, GRAIN, [&](int64_t i0, int64_t i1) { std::fill(x + i0, x + i1, 0.f); });
}

}  // namespace ra::cpu::ops
