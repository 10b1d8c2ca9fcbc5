// Launcher of the rotary-embedding kernel (rope.cuh) for whole tensors.
#include "internal.h"
#include "ops.h"
#include "rope.cuh"

namespace ra::cuda::ops {

Tensor rope(const Tensor& x, const int32_t* positions, const double* inv_freq, bool inverse) {
  const DType t = activation_dtype(x, "x");
  if (x.shape.size() != 3 || x.shape[2] % 2 != 0) throw UserError("RangeError", "x: expected shape [M, H, D] with D even");
  const int64_t M = x.shape[0], H = x.shape[1], D = x.shape[2];
  Tensor out = Tensor::empty(x.shape, t, Device::CUDA);
  if (x.numel() == 0) return out;
  Tensor pos = upload_ints(positions, M), freq = upload_doubles(inv_freq, D / 2);
  by_dtype(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_rope<T>(ptr<T>(x), ints(pos), ptr<double>(freq), ptr<T>(out), M, H, D, inverse, nullptr);
  });
  check_launch("rope kernel launch");
  return out;
}

}  // namespace ra::cuda::ops
