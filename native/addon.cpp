// The N-API layer: one function per library operation, each a thin mapping onto the
// native code. Argument checks with user-facing messages live in lib/ (TypeScript); the
// checks here only keep a bad call from crashing the process. Here: tensors, attention,
// facts about the machine, and the module's init; groups and the ring: group_addon.cpp;
// the training ops: ops_addon.cpp.
#include <napi.h>

#include <cmath>
#include <cstring>

#include "common.h"
#include "cpu/attention.h"
#include "cuda/attention.h"
#include "cuda/device.h"
#include "cuda/ring_cuda.h"
#include "napi_util.h"
#include "nccl/group.h"
#include "ring/ring_attention.h"

namespace {

using ra::Device;
using ra::DType;
using ra::Tensor;
using ra::UserError;

using namespace ra::napi;

// The TS layer checks shapes; this keeps a caller of the raw addon from a saturated or wrapped size.
std::vector<int64_t> shape_of(const Napi::Value& v) {
  if (!v.IsArray()) throw UserError("TypeError", "shape: expected an array of integers");
  auto arr = v.As<Napi::Array>();
  std::vector<int64_t> shape(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const Napi::Value d = arr.Get(i);
    const double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    if (!(x >= 0 && x <= 9007199254740991.0 && x == double(int64_t(x))))
      throw UserError("RangeError", "shape[" + std::to_string(i) + "]: expected a non-negative safe integer");
    shape[i] = int64_t(x);
  }
  return shape;
}

// createTensor(data: Float32Array, shape: number[], dtype: 0|1|2, device: 0|1)
Napi::Value CreateTensor(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    // The type from the engine, not the prototype, which a caller may have swapped.
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw UserError("TypeError", "data: expected a Float32Array");
    auto shape = shape_of(info[1]);  // first: its getters run JS, which could detach the data's buffer
    auto data = info[0].As<Napi::Float32Array>();
    auto dtype = DType(info[2].As<Napi::Number>().Int32Value());
    auto device = Device(info[3].As<Napi::Number>().Int32Value());
    Tensor t = Tensor::empty(shape, dtype, device);
    if (size_t(t.numel()) != data.ElementLength()) throw Napi::RangeError::New(env, "data: length does not match shape");
    if (device == Device::CPU) ra::convert_from_f32(dtype, data.Data(), t.storage->ptr, data.ElementLength());
    else ra::cuda::upload_f32(data.Data(), t.storage->ptr, dtype, data.ElementLength());
    return wrap(env, std::move(t));
  });
}

// createZeros(shape: number[], dtype: 0|1|2, device: 0|1): a tensor of zeros, made where it
// lives (no host array of its size, which for a long sequence's activations would be GiBs).
Napi::Value CreateZeros(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor t = Tensor::empty(shape_of(info[0]), DType(info[1].As<Napi::Number>().Int32Value()),
                             Device(info[2].As<Napi::Number>().Int32Value()));
    const size_t bytes = size_t(t.numel()) * ra::dtype_size(t.dtype);
    if (bytes == 0) return wrap(env, std::move(t));
    if (t.device == Device::CPU) std::memset(t.storage->ptr, 0, bytes);
    else ra::cuda::zero(t.storage->ptr, bytes);
    return wrap(env, std::move(t));
  });
}


ra::cpu::AttnParams whole_params(const Tensor& q, const Tensor& k, bool causal, float scale) {
  ra::cpu::AttnParams p{};
  const auto& qs = q.shape;
  const auto& ks = k.shape;
  if (qs.size() != 4 || ks.size() != 4 || qs[0] != ks[0] || qs[3] != ks[3] || ks[2] == 0 || qs[2] % ks[2] != 0)
    throw UserError("RangeError", "attention: inconsistent shapes");
  p.batch = int(qs[0]);
  p.seq_q = int(qs[1]);
  p.heads = int(qs[2]);
  p.head_dim = int(qs[3]);
  p.seq_k = int(ks[1]);
  p.kv_heads = int(ks[2]);
  p.q_row_stride = p.o_row_stride = qs[2] * qs[3];
  p.q_batch_stride = p.o_batch_stride = qs[1] * qs[2] * qs[3];
  p.k_row_stride = ks[2] * ks[3];
  p.k_batch_stride = ks[1] * ks[2] * ks[3];
  p.lse_head_stride = qs[1];
  p.lse_batch_stride = qs[1] * qs[2];
  p.scale = scale;
  p.causal = causal;
  p.causal_offset = ks[1] - qs[1];
  p.accumulate = false;
  return p;
}

// Packed sequences: the document of each token ([batch, seq] Int32Array) at info[i], or null
// when absent. The same ids serve queries and keys, so seq_q must equal seq_k.
const int32_t* documents(const Napi::CallbackInfo& info, size_t i, const Tensor& q, const Tensor& k) {
  if (info.Length() <= i || info[i].IsUndefined()) return nullptr;
  if (q.shape.size() != 4 || k.shape.size() != 4 || q.shape[1] != k.shape[1])
    throw UserError("RangeError", "documentIds: q and k must have the same sequence length");
  return int32s(info[i], "documentIds", q.shape[0] * q.shape[1]).Data();
}
void with_documents(ra::cpu::AttnParams& p, const int32_t* docs) {
  p.doc_q = p.doc_k = docs;
  p.doc_q_batch_stride = p.doc_k_batch_stride = p.seq_q;
}

// attentionForward(q, k, v, causal, scale[, documentIds]) -> [out, lse]
Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &q = unwrap(env, info[0], "q"), &k = unwrap(env, info[1], "k"), &v = unwrap(env, info[2], "v");
    ra::check_attention_operands("attention", q, k, v);
    const bool causal = info[3].ToBoolean();
    const float scale = info[4].As<Napi::Number>().FloatValue();
    const int32_t* docs = documents(info, 5, q, k);
    if (q.device == Device::CUDA) {
      auto r = ra::cuda::attention_forward(q, k, v, causal, scale, docs);
      Tensor ts[] = {std::move(r.out), std::move(r.lse)};
      return wrap_all(env, ts);
    }
    auto p = whole_params(q, k, causal, scale);
    with_documents(p, docs);
    F32 q32(q), k32(k), v32(v);
    Output outs[] = {{q.shape, q.dtype}, {{p.batch, p.heads, p.seq_q}, DType::F32}};
    p.q = q32.ptr, p.k = k32.ptr, p.v = v32.ptr, p.out = outs[0].ptr, p.lse = outs[1].ptr;
    ra::cpu::attention_forward(p);
    return wrap_all(env, outs);
  });
}

// attentionBackward(dout, q, k, v, out, lse, causal, scale, deterministic[, documentIds]) -> [dq, dk, dv]
// (the CPU backward is always deterministic)
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &dout = unwrap(env, info[0], "dout"), &q = unwrap(env, info[1], "q"), &k = unwrap(env, info[2], "k"),
                 &v = unwrap(env, info[3], "v"), &out = unwrap(env, info[4], "out"), &lse = unwrap(env, info[5], "lse");
    ra::check_attention_operands("attentionBackward", q, k, v, &dout, &out, &lse);
    const bool causal = info[6].ToBoolean();
    const float scale = info[7].As<Napi::Number>().FloatValue();
    const int32_t* docs = documents(info, 9, q, k);
    if (q.device == Device::CUDA) {
      auto g = ra::cuda::attention_backward(dout, q, k, v, out, lse, causal, scale, info[8].ToBoolean(), docs);
      Tensor ts[] = {std::move(g.dq), std::move(g.dk), std::move(g.dv)};
      return wrap_all(env, ts);
    }
    auto p = whole_params(q, k, causal, scale);
    with_documents(p, docs);
    F32 do32(dout), q32(q), k32(k), v32(v), o32(out), l32(lse);
    p.q = q32.ptr, p.k = k32.ptr, p.v = v32.ptr, p.out = const_cast<float*>(o32.ptr), p.lse = const_cast<float*>(l32.ptr);
    std::vector<float> delta(size_t(p.batch) * p.heads * p.seq_q);
    ra::cpu::attention_delta(p, do32.ptr, delta.data());
    Output outs[] = {{q.shape, q.dtype}, {k.shape, k.dtype}, {v.shape, v.dtype}};
    for (auto& o : outs) std::fill(o.ptr, o.ptr + o.tensor.numel(), 0.f);  // the kernel accumulates
    ra::cpu::attention_backward({p, do32.ptr, delta.data(), outs[0].ptr, outs[1].ptr, outs[2].ptr});
    return wrap_all(env, outs);
  });
}


// ---- facts about this binary and this machine ----

Napi::Value BuildSystem(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), ra::build_system()); }
Napi::Value CpuKernels(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), ra::cpu_kernels()); }
Napi::Value CpuThreads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), ra::cpu_threads()); }

// findLibrary(nameOrPath) -> the resolved path, or "" when the loader cannot open it
Napi::Value FindLibrary(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    return Napi::String::New(env, ra::find_library(info[0].As<Napi::String>().Utf8Value()));
  });
}

// attentionLaunches() -> { forward, backward, hopperForward, hopperBackward }: CUDA attention
// calls whose kernels were launched so far in this process (for tests: which kernels ran)
Napi::Value AttentionLaunches(const Napi::CallbackInfo& info) {
  const auto n = ra::cuda::kernel_launches();
  auto o = Napi::Object::New(info.Env());
  o.Set("forward", double(n.forward));
  o.Set("backward", double(n.backward));
  o.Set("hopperForward", double(n.hopper_forward));
  o.Set("hopperBackward", double(n.hopper_backward));
  return o;
}

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto r = ra::cuda::query();
    auto o = Napi::Object::New(env);
    o.Set("compiled", r.compiled);
    o.Set("available", r.available);
    o.Set("deviceCount", r.device_count);
    o.Set("driverVersion", r.driver_version);
    o.Set("runtimeVersion", r.runtime_version);
    o.Set("architectures", r.archs);
    o.Set("reason", r.reason);
    auto devices = Napi::Array::New(env, r.devices.size());
    for (size_t i = 0; i < r.devices.size(); ++i) {
      auto d = Napi::Object::New(env);
      d.Set("name", r.devices[i].name);
      d.Set("computeCapability", std::to_string(r.devices[i].major) + "." + std::to_string(r.devices[i].minor));
      d.Set("totalMemory", double(r.devices[i].total_memory));
      d.Set("multiprocessors", r.devices[i].multiprocessors);
      devices.Set(uint32_t(i), d);
    }
    o.Set("devices", devices);
    return o;
  });
}

Napi::Value CudaMemoryStats(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto s = ra::cuda::allocator_stats();
    auto o = Napi::Object::New(env);
    o.Set("cudaMallocCalls", double(s.cuda_malloc_calls));
    o.Set("cacheHits", double(s.cache_hits));
    o.Set("bytesInUse", double(s.bytes_in_use));
    o.Set("bytesCached", double(s.bytes_cached));
    o.Set("peakBytesInUse", double(s.peak_bytes_in_use));
    return o;
  });
}

// cudaBytesInUseOn(device): bytes of the tensors alive on that GPU
Napi::Value CudaBytesInUseOn(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    return Napi::Number::New(env, double(ra::cuda::bytes_in_use_on(info[0].As<Napi::Number>().Int32Value())));
  });
}

// cudaSetDevice(device): the GPU this process's later tensors and kernels use
Napi::Value CudaSetDevice(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::cuda::set_device(info[0].As<Napi::Number>().Int32Value());
    return env.Undefined();
  });
}

Napi::Value HostMemoryStats(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto s = ra::host_memory_stats();
    auto o = Napi::Object::New(env);
    o.Set("bytesInUse", double(s.bytes_in_use));
    o.Set("peakBytesInUse", double(s.peak_bytes_in_use));
    o.Set("handles", double(TensorHandle::alive.load()));
    return o;
  });
}

Napi::Value ResetPeakMemoryStats(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::reset_host_peak();
    ra::cuda::reset_peak();
    return env.Undefined();
  });
}

Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::cuda::synchronize();
    return env.Undefined();
  });
}

Napi::Value CudaEmptyCache(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::cuda::empty_cache();
    return env.Undefined();
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->tensor_ctor = Napi::Persistent(TensorHandle::Define(env));
  env.SetInstanceData(data);
  register_ops(env, exports);
  register_groups(env, exports);
  exports.Set("createTensor", Napi::Function::New(env, CreateTensor));
  exports.Set("createZeros", Napi::Function::New(env, CreateZeros));
  exports.Set("attentionForward", Napi::Function::New(env, AttentionForward));
  exports.Set("attentionBackward", Napi::Function::New(env, AttentionBackward));
  exports.Set("buildSystem", Napi::Function::New(env, BuildSystem));
  exports.Set("cpuKernels", Napi::Function::New(env, CpuKernels));
  exports.Set("cpuThreads", Napi::Function::New(env, CpuThreads));
  exports.Set("findLibrary", Napi::Function::New(env, FindLibrary));
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
  exports.Set("attentionLaunches", Napi::Function::New(env, AttentionLaunches));
  exports.Set("cudaMemoryStats", Napi::Function::New(env, CudaMemoryStats));
  exports.Set("cudaBytesInUseOn", Napi::Function::New(env, CudaBytesInUseOn));
  exports.Set("cudaSetDevice", Napi::Function::New(env, CudaSetDevice));
  exports.Set("hostMemoryStats", Napi::Function::New(env, HostMemoryStats));
  exports.Set("resetPeakMemoryStats", Napi::Function::New(env, ResetPeakMemoryStats));
  exports.Set("cudaEmptyCache", Napi::Function::New(env, CudaEmptyCache));
  exports.Set("cudaSynchronize", Napi::Function::New(env, CudaSynchronize));
  return exports;
}

}  // namespace

NODE_API_MODULE(ring_attention, Init)
