// Launchers of AdamW and the gradient utilities (optim.cuh) for whole tensors.
#include <cmath>
#include <vector>

#include "internal.h"
#include "ops.h"
#include "optim.cuh"

namespace ra::cuda::ops {

namespace {
// The step's scalars exactly as the CPU op computes them: the bias corrections in double.
AdamWScalars adamw_scalars(int64_t step, float lr, float beta1, float beta2, float eps, float grad_scale) {
  const double bc1 = 1.0 - std::pow(double(beta1), double(step)), bc2 = 1.0 - std::pow(double(beta2), double(step));
  return {beta1, beta2, eps, float(double(lr) / bc1), float(std::sqrt(bc2)), grad_scale};
}
float lr_wd(float lr, float weight_decay) { return float(double(lr) * weight_decay); }
}  // namespace

void adamw(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, int64_t step, float lr, float beta1, float beta2,
           float eps, float weight_decay) {
  expect(param, DType::F32, "param"), expect(grad, DType::F32, "grad"), expect(m, DType::F32, "m"), expect(v, DType::F32, "v");
  const int64_t n = param.numel();
  if (n == 0) return;
  const AdamWScalars s = adamw_scalars(step, lr, beta1, beta2, eps, 1.f);
  launch_adamw(ptr<float>(param), ptr<float>(grad), ptr<float>(m), ptr<float>(v), n, beta1, beta2, eps, s.step_size,
               s.bc2_sqrt, lr_wd(lr, weight_decay), nullptr);
  check_launch("adamw kernel launch");
}

void adamw_multi(const std::vector<Tensor*>& params, const std::vector<Tensor*>& grads, const std::vector<Tensor*>& ms,
                 const std::vector<Tensor*>& vs, const std::vector<Tensor*>& copies, const std::vector<float>& weight_decay,
                 int64_t step, float lr, float beta1, float beta2, float eps, float grad_scale) {
  std::vector<AdamWSlice> slices;
  int64_t chunks = 0;
  // Each step checks ~150 tensors: a name is made only for one that fails.
  const auto need = [](const Tensor& t, DType dtype, size_t i, const char* what) {
    if (t.device != Device::CUDA || t.dtype != dtype) expect(t, dtype, ("entries[" + std::to_string(i) + "]." + what).c_str());
  };
  for (size_t i = 0; i < params.size(); ++i) {
    need(*params[i], DType::F32, i, "param"), need(*grads[i], DType::F32, i, "grad");
    need(*ms[i], DType::F32, i, "m"), need(*vs[i], DType::F32, i, "v");
    if (copies[i]) need(*copies[i], DType::BF16, i, "copy");
    const int64_t n = params[i]->numel();
    if (n == 0) continue;  // no chunk: the kernel's search never lands on it
    slices.push_back({ptr<float>(*params[i]), ptr<float>(*grads[i]), ptr<float>(*ms[i]), ptr<float>(*vs[i]),
                      copies[i] ? copies[i]->storage->ptr : nullptr, n, chunks, lr_wd(lr, weight_decay[i])});
    chunks += adamw_chunks(n);
  }
  if (slices.empty()) return;
  if (chunks > 0x7fffffff) throw UserError("RangeError", "entries: more than 2^31 chunks of 4096 elements in one call");
  const AdamWScalars s = adamw_scalars(step, lr, beta1, beta2, eps, grad_scale);
  Tensor table = upload(slices.data(), slices.size() * sizeof(AdamWSlice));  // staged: no wait for the device
  launch_adamw_multi<__nv_bfloat16>(static_cast<const AdamWSlice*>(table.storage->ptr), int(slices.size()), chunks, s,
                                    nullptr);
  check_launch("adamw kernel launch");
}

double sum_of_squares(const std::vector<const Tensor*>& ts) {
  // One partial per block of every tensor, in one buffer, so that the whole list costs one copy
  // back and one wait (the global gradient norm: ~150 tensors for a 1B model).
  std::vector<int64_t> first(ts.size() + 1, 0);  // tensor i's partials are [first[i], first[i+1])
  for (size_t i = 0; i < ts.size(); ++i) {
    activation_dtype(*ts[i], ("t[" + std::to_string(i) + "]").c_str());
    const int64_t n = ts[i]->numel();
    first[i + 1] = first[i] + (n ? int64_t(sum_of_squares_blocks(n)) : 0);
  }
  const int64_t blocks = first.back();
  if (blocks == 0) return 0;
  Tensor partial = scratch(2 * blocks, DType::F32);  // doubles
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = *ts[i];
    if (t.numel() == 0) continue;
    by_dtype(t.dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      launch_sum_of_squares<T>(ptr<T>(t), t.numel(), ptr<double>(partial) + first[i], nullptr);
    });
  }
  check_launch("sumOfSquares kernel launch");
  std::vector<double> host(static_cast<size_t>(blocks));
  check(cudaMemcpy(host.data(), partial.storage->ptr, size_t(blocks) * sizeof(double), cudaMemcpyDeviceToHost), "copy to host");
  // Each tensor's partials in block order, then the tensors in list order: deterministic, and
  // the same bits as adding the tensors' own sums one by one.
  double total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    double one = 0;
    for (int64_t b = first[i]; b < first[i + 1]; ++b) one += host[size_t(b)];
    total += one;
  }
  return total;
}

void scale(Tensor& t, float s) {
  const DType dt = activation_dtype(t, "t");
  if (t.numel() == 0) return;
  by_dtype(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_scale<T>(ptr<T>(t), t.numel(), s, nullptr);
  });
  check_launch("scale kernel launch");
}

void add(Tensor& a, const Tensor& b) {
  const DType dt = activation_dtype(a, "a");
  expect(b, dt, "b");
  if (a.numel() == 0) return;
  by_dtype(dt, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_add<T>(ptr<T>(a), ptr<T>(b), a.numel(), nullptr);
  });
  check_launch("add kernel launch");
}

void zero(Tensor& t) {
  activation_dtype(t, "t");
  if (t.numel() > 0) ra::cuda::zero(t.storage->ptr, size_t(t.numel()) * dtype_size(t.dtype));
}

void copy(Tensor& dst, const Tensor& src) {
  if (dst.device != Device::CUDA || src.device != Device::CUDA) throw UserError("TypeError", "copy: expected cuda tensors");
  const size_t n = size_t(dst.numel());
  if (n == 0) return;
  if (src.dtype == dst.dtype)
    check(cudaMemcpyAsync(dst.storage->ptr, src.storage->ptr, n * dtype_size(dst.dtype), cudaMemcpyDeviceToDevice, nullptr),
          "device copy");
  else if (src.dtype == DType::F32)
    ra::cuda::f32_to_dtype(ptr<float>(src), dst.storage->ptr, dst.dtype, n);  // rounds to nearest even
  else
    throw UserError("TypeError", std::string("src: copying ") + dtype_name(src.dtype) + " into " + dtype_name(dst.dtype) +
                                     " is not supported on cuda (float32 into any dtype, or the same dtype)");
}

}  // namespace ra::cuda::ops
