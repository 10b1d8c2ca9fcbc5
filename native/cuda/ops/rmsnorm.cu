// Launchers of the RMSNorm kernels (rmsnorm.cuh) for whole tensors.
#include "internal.h"
#include "ops.h"
#include "rmsnorm.cuh"

namespace ra::cuda::ops {

void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const DType t = activation_dtype(x, "x");
  expect(w, t, "w"), expect(y, t, "y"), expect(rstd, DType::F32, "rstd");
  const int64_t M = rows(x), C = cols(x);
  if (M == 0) return;
  by_dtype(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_rmsnorm_fwd<T>(ptr<T>(x), ptr<T>(w), eps, ptr<T>(y), ptr<float>(rstd), M, C, nullptr);
  });
  check_launch("rmsNorm kernel launch");
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor& dw) {
  const DType t = activation_dtype(x, "x");
  expect(dy, t, "dy"), expect(w, t, "w"), expect(dx, t, "dx"), expect(rstd, DType::F32, "rstd"), expect(dw, DType::F32, "dw");
  const int64_t M = rows(x), C = cols(x);
  if (M == 0 || C == 0) return;
  Tensor partial = scratch(rmsnorm_dw_chunks(M) * C, DType::F32);
  by_dtype(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_rmsnorm_bwd<T>(ptr<T>(dy), ptr<T>(x), ptr<T>(w), ptr<float>(rstd), ptr<T>(dx), ptr<float>(dw),
                          ptr<float>(partial), M, C, nullptr);
  });
  check_launch("rmsNorm backward kernel launch");
}

}  // namespace ra::cuda::ops
