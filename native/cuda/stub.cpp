// Stands in for device.cu in builds without nvcc (binding.gyp, or CMake with no CUDA).
#include "attention.h"
#include "device.h"
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
void reset_peak() {}
void empty_cache() {}
void upload_f32(const float*, void*, DType, size_t) { throw not_compiled(); }
void download_f32(const void*, DType, float*, size_t) { throw not_compiled(); }
void f32_to_dtype(const float*, void*, DType, size_t, void*) { throw not_compiled(); }
void zero(void*, size_t, void*) { throw not_compiled(); }
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
AttnOut attention_forward(const Tensor&, const Tensor&, const Tensor&, bool, float) { throw not_compiled(); }
AttnGrads attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
                             float, bool) {
  throw not_compiled();
}

}  // namespace ra::cuda
