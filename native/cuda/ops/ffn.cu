// The SwiGLU feed-forward on CUDA, block_rows tokens at a time as on the CPU (ffn.cpp), so
// that only [block_rows, F] activations exist: gate and up by cuBLAS into float32 scratch,
// the elementwise kernels of swiglu.cuh, then the down product (and, backward, the weight
// and input gradients) by cuBLAS. Weight gradients accumulate in float32 (beta = 1). With
// bfloat16 tensors, what feeds a product is rounded to bfloat16 (h, dg, du), and dx is
// summed in float32 scratch and rounded once.
#include <algorithm>

#include "internal.h"
#include "ops.h"
#include "swiglu.cuh"

namespace ra::cuda::ops {

Tensor ffn(const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down, int64_t block_rows) {
  const DType t = activation_dtype(x, "x");
  expect(w_gate, t, "wGate"), expect(w_up, t, "wUp"), expect(w_down, t, "wDown");
  const int64_t M = rows(x), C = cols(x), F = rows(w_gate);
  Tensor y = Tensor::empty({M, C}, t, Device::CUDA);
  if (M == 0) return y;
  const int64_t B = std::max<int64_t>(1, std::min(block_rows, M));
  Tensor g = scratch(B * F, DType::F32), u = scratch(B * F, DType::F32);
  Tensor h = t == DType::F32 ? g : scratch(B * F, t);  // float32: h overwrites g in place
  for (int64_t r0 = 0; r0 < M; r0 += B) {
    const int64_t rows = std::min(B, M - r0);
    const void* xb = at(x, r0 * C);
    gemm(false, true, rows, F, C, xb, C, w_gate.storage->ptr, C, t, 0.f, g.storage->ptr, F, DType::F32);
    gemm(false, true, rows, F, C, xb, C, w_up.storage->ptr, C, t, 0.f, u.storage->ptr, F, DType::F32);
    by_dtype(t, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      launch_swiglu_fwd<T>(ptr<float>(g), ptr<float>(u), ptr<T>(h), rows * F, nullptr);
    });
    check_launch("swiglu kernel launch");
    gemm(false, true, rows, C, F, h.storage->ptr, F, w_down.storage->ptr, F, t, 0.f, at(y, r0 * C), C, t);
  }
  return y;
}

void ffn_backward(const Tensor& dy, const Tensor& x, const Tensor& w_gate, const Tensor& w_up, const Tensor& w_down,
                  int64_t block_rows, Tensor& dx, Tensor& dw_gate, Tensor& dw_up, Tensor& dw_down) {
  const DType t = activation_dtype(x, "x");
  expect(w_gate, t, "wGate"), expect(w_up, t, "wUp"), expect(w_down, t, "wDown"), expect(dy, t, "dy"), expect(dx, t, "dx");
  expect(dw_gate, DType::F32, "dwGate"), expect(dw_up, DType::F32, "dwUp"), expect(dw_down, DType::F32, "dwDown");
  const int64_t M = rows(x), C = cols(x), F = rows(w_gate);
  if (M == 0) return;
  const int64_t B = std::max<int64_t>(1, std::min(block_rows, M));
  const bool f32 = t == DType::F32;
  Tensor g = scratch(B * F, DType::F32), u = scratch(B * F, DType::F32), dh = scratch(B * F, DType::F32);
  // float32: h lives in dh's buffer until dh overwrites it, dg and du overwrite g and u (as the CPU op does)
  Tensor h = f32 ? dh : scratch(B * F, t), dg = f32 ? g : scratch(B * F, t), du = f32 ? u : scratch(B * F, t);
  Tensor dx_f32 = f32 ? Tensor{} : scratch(B * C, DType::F32);
  for (int64_t r0 = 0; r0 < M; r0 += B) {
    const int64_t rows = std::min(B, M - r0);
    const void *xb = at(x, r0 * C), *dyb = at(dy, r0 * C);
    gemm(false, true, rows, F, C, xb, C, w_gate.storage->ptr, C, t, 0.f, g.storage->ptr, F, DType::F32);
    gemm(false, true, rows, F, C, xb, C, w_up.storage->ptr, C, t, 0.f, u.storage->ptr, F, DType::F32);
    by_dtype(t, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      launch_swiglu_fwd<T>(ptr<float>(g), ptr<float>(u), ptr<T>(h), rows * F, nullptr);
    });
    check_launch("swiglu kernel launch");
    // dwDown[C,F] += dy^T h;  dh[rows,F] = dy wDown
    gemm(true, false, C, F, rows, dyb, C, h.storage->ptr, F, t, 1.f, dw_down.storage->ptr, F, DType::F32);
    gemm(false, false, rows, F, C, dyb, C, w_down.storage->ptr, F, t, 0.f, dh.storage->ptr, F, DType::F32);
    by_dtype(t, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      launch_swiglu_bwd<T>(ptr<float>(g), ptr<float>(u), ptr<float>(dh), ptr<T>(dg), ptr<T>(du), rows * F, nullptr);
    });
    check_launch("swiglu backward kernel launch");
    // dwGate += dg^T x, dwUp += du^T x;  dx = dg wGate + du wUp
    gemm(true, false, F, C, rows, dg.storage->ptr, F, xb, C, t, 1.f, dw_gate.storage->ptr, C, DType::F32);
    gemm(true, false, F, C, rows, du.storage->ptr, F, xb, C, t, 1.f, dw_up.storage->ptr, C, DType::F32);
    void* dxb = f32 ? at(dx, r0 * C) : dx_f32.storage->ptr;
    gemm(false, false, rows, C, F, dg.storage->ptr, F, w_gate.storage->ptr, C, t, 0.f, dxb, C, DType::F32);
    gemm(false, false, rows, C, F, du.storage->ptr, F, w_up.storage->ptr, C, t, 1.f, dxb, C, DType::F32);
    if (!f32) f32_to_dtype(ptr<float>(dx_f32), at(dx, r0 * C), t, size_t(rows * C));
  }
}

}  // namespace ra::cuda::ops
