// The LM head fused with cross-entropy on CUDA, chunk_rows tokens at a time as on the CPU
// (cross_entropy.cpp): the chunk's logits [chunk_rows, V] by cuBLAS into float32 scratch,
// the row kernel of cross_entropy.cuh (loss per row in double; dlogits in place, or in
// bfloat16 scratch for bfloat16 products), then dh and dwHead by cuBLAS. [M, V] never
// exists. The loss is a number on the host: the per-row losses are copied back once at the
// end (this waits for the device) and summed in row order, so the sum is deterministic.
#include <algorithm>
#include <vector>

#include "cross_entropy.cuh"
#include "internal.h"
#include "ops.h"

namespace ra::cuda::ops {

CrossEntropyResult cross_entropy(const Tensor& h, const Tensor& w_head, const int32_t* targets, int64_t chunk_rows,
                                 int32_t ignore_index, float grad_scale, Tensor* dh, Tensor* dw_head) {
  const DType t = activation_dtype(h, "h");
  expect(w_head, t, "wHead");
  if (dh) expect(*dh, t, "dh");
  if (dw_head) expect(*dw_head, DType::F32, "dwHead");
  const int64_t M = rows(h), C = cols(h), V = rows(w_head);
  CrossEntropyResult res{0.0, 0};
  if (M == 0) return res;
  const int64_t R = std::max<int64_t>(1, std::min(chunk_rows, M));
  const bool grads = dh || dw_head;
  Tensor logits = scratch(R * V, DType::F32);
  Tensor dl = !grads ? Tensor{} : t == DType::F32 ? logits : scratch(R * V, t);
  Tensor d_targets = upload_ints(targets, M);
  Tensor row_loss = scratch(2 * M, DType::F32);  // M doubles
  for (int64_t r0 = 0; r0 < M; r0 += R) {
    const int64_t rows = std::min(R, M - r0);
    const void* hb = at(h, r0 * C);
    gemm(false, true, rows, V, C, hb, C, w_head.storage->ptr, C, t, 0.f, logits.storage->ptr, V, DType::F32);
    by_dtype(t, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      launch_ce_rows<T>(ptr<float>(logits), ints(d_targets) + r0, rows, V, ignore_index, grad_scale,
                        ptr<double>(row_loss) + r0, grads ? ptr<T>(dl) : nullptr, nullptr);
    });
    check_launch("cross-entropy kernel launch");
    if (dh) gemm(false, false, rows, C, V, dl.storage->ptr, V, w_head.storage->ptr, C, t, 0.f, at(*dh, r0 * C), C, t);
    if (dw_head)
      gemm(true, false, V, C, rows, dl.storage->ptr, V, hb, C, t, 1.f, dw_head->storage->ptr, C, DType::F32);
  }
  std::vector<double> loss(static_cast<size_t>(M));
  check(cudaMemcpy(loss.data(), row_loss.storage->ptr, size_t(M) * sizeof(double), cudaMemcpyDeviceToHost),
        "copy to host");
  for (int64_t i = 0; i < M; ++i) {
    if (targets[i] == ignore_index) continue;
    res.loss_sum += loss[size_t(i)];
    ++res.count;
  }
  return res;
}

}  // namespace ra::cuda::ops
