// Stands in for device.cu in builds without nvcc (binding.gyp, or CMake with no CUDA).
#include "attention.h"
#include "device.h"
#include "ops/ops.h"
#include "ring_cuda.h"

namespace ra::cuda {

static UserError not_compiled() {
  return UserError("Error", "this build of ring-attention has no CUDA support (built without nvcc)");
}

RuntimeInfo query() {
  RuntimeInfo info;
  info.reason = "this build has no CUDA support (built without nvcc)";
  return info;
}
void* alloc(size_t) { throw not_compiled(); }
void release(void*) {}
AllocatorStats allocator_stats() { return {}; }
size_t bytes_in_use_on(int) { return 0; }
void set_device(int) { throw not_compiled(); }
void reset_peak() {}
void empty_cache() {}
void upload_f32(const float*, void*, DType, size_t) { throw not_compiled(); }
void download_f32(const void*, DType, float*, size_t) { throw not_compiled(); }
void f32_to_dtype(const float*, void*, DType, size_t, void*) { throw not_compiled(); }
void zero(void*, size_t, void*) { throw not_compiled(); }
void upload_async(const void*, void*, size_t, void*) { throw not_compiled(); }
void synchronize() {}
void ring_forward(ring::LocalTransport&, const ring::RingShape&, const Tensor&, const Tensor&, const Tensor&, Tensor&,
                  Tensor&) {
  throw not_compiled();
}
void ring_backward(ring::LocalTransport&, const ring::RingShape&, const Tensor&, const Tensor&, const Tensor&,
                   const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, Tensor&) {
  throw not_compiled();
}
void ring_forward_nccl(int64_t, const ring::RingShape&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) {
  throw not_compiled();
}
void ring_backward_nccl(int64_t, const ring::RingShape&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&, const Tensor&, Tensor&, Tensor&, Tensor&) {
  throw not_compiled();
}
KernelLaunches kernel_launches() { return {}; }
AttnOut attention_forward(const Tensor&, const Tensor&, const Tensor&, bool, float, const int32_t*) { throw not_compiled(); }
AttnGrads attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                             float, bool, const int32_t*) {
  throw not_compiled();
}


namespace ops {
void load_cublas(const std::string&, const std::string&) { throw not_compiled(); }
Tensor linear(const Tensor&, const Tensor&) { throw not_compiled(); }
void linear_backward(const Tensor&, const Tensor&, const Tensor&, Tensor*, Tensor&) { throw not_compiled(); }
Tensor embedding(const int32_t*, int64_t, const Tensor&) { throw not_compiled(); }
void embedding_backward(const int32_t*, int64_t, const Tensor&, Tensor&, int32_t) { throw not_compiled(); }
void rmsnorm(const Tensor&, const Tensor&, float, Tensor&, Tensor&) { throw not_compiled(); }
void rmsnorm_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&) { throw not_compiled(); }
Tensor rope(const Tensor&, const int32_t*, const double*, bool) { throw not_compiled(); }
Tensor ffn(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t) { throw not_compiled(); }
void ffn_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, Tensor&, Tensor&,
                  Tensor&, Tensor&) {
  throw not_compiled();
}
CrossEntropyResult cross_entropy(const Tensor&, const Tensor&, const int32_t*, int64_t, int32_t, float, Tensor*, Tensor*) {
  throw not_compiled();
}
void adamw(Tensor&, const Tensor&, Tensor&, Tensor&, int64_t, float, float, float, float, float) { throw not_compiled(); }
double sum_of_squares(const std::vector<const Tensor*>&) { throw not_compiled(); }
void adamw_multi(const std::vector<Tensor*>&, const std::vector<Tensor*>&, const std::vector<Tensor*>&,
                 const std::vector<Tensor*>&, const std::vector<Tensor*>&, const std::vector<float>&, int64_t, float, float,
                 float, float, float) {
  throw not_compiled();
}
void scale(Tensor&, float) { throw not_compiled(); }
void add(Tensor&, const Tensor&) { throw not_compiled(); }
void zero(Tensor&) { throw not_compiled(); }
void copy(Tensor&, const Tensor&) { throw not_compiled(); }
}  // namespace ops

}  // namespace ra::cuda
