// The N-API pieces shared by the files that define addon functions (addon.cpp,
// group_addon.cpp, ops_addon.cpp): the tensor handle class, the per-instance data holding its
// constructor, and the helpers that turn native errors into JS exceptions and move tensors
// (and float32 views of them) across the boundary.
#pragma once
#include <napi.h>

#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "cuda/device.h"

namespace ra::napi {

using ra::Device;
using ra::DType;
using ra::Tensor;
using ra::UserError;

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TensorHandle",
                       {InstanceMethod("toFloat32Array", &TensorHandle::ToFloat32Array),
                        InstanceMethod("dispose", &TensorHandle::Dispose)});
  }
  explicit TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {}
  ~TensorHandle() override { Release(Env()); }

  Tensor tensor;
  bool disposed = false;

  void Adopt(Napi::Env env, Tensor t) {
    tensor = std::move(t);
    ReportHostBytes(env, int64_t(tensor.storage->bytes));
  }

 private:
  // Tells V8 how much host memory a tensor holds so that GC pressure is right. The C call,
  // not node-addon-api's throwing wrapper: this also runs in the destructor, possibly while
  // a worker's environment is being torn down, where an exception would abort the process.
  void ReportHostBytes(Napi::Env env, int64_t delta) {
    int64_t total;
    if (tensor.device == Device::CPU) napi_adjust_external_memory(env, delta, &total);
  }
  void Release(Napi::Env env) {
    if (disposed || !tensor.storage) return;
    ReportHostBytes(env, -int64_t(tensor.storage->bytes));
    tensor.storage.reset();
    disposed = true;
  }
  Napi::Value ToFloat32Array(const Napi::CallbackInfo& info);  // defined below
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    Release(info.Env());
    return info.Env().Undefined();
  }
};

struct AddonData {
  Napi::FunctionReference tensor_ctor;
};

// Runs `fn`, turning native errors into JS exceptions of the right kind.
template <typename F>
Napi::Value guard(const Napi::CallbackInfo& info, F&& fn) {
  Napi::Env env = info.Env();
  try {
    return fn(env);
  } catch (const Napi::Error&) {
    throw;
  } catch (const UserError& e) {
    if (e.kind == "TypeError") throw Napi::TypeError::New(env, e.what());
    if (e.kind == "RangeError") throw Napi::RangeError::New(env, e.what());
    Napi::Error error = Napi::Error::New(env, e.what());
    // A rank released because another failed: launch() reports the other's error instead.
    if (e.kind == "Aborted") error.Set("code", Napi::String::New(env, "ERR_RING_ATTENTION_ABORTED"));
    throw error;
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(env, "out of host memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("ring-attention native error: ") + e.what());
  }
}

inline Napi::Value wrap(Napi::Env env, Tensor t) {
  Napi::Object obj = env.GetInstanceData<AddonData>()->tensor_ctor.New({});
  TensorHandle::Unwrap(obj)->Adopt(env, std::move(t));
  return obj;
}

inline Tensor& unwrap(Napi::Env env, const Napi::Value& v, const char* name) {
  auto* data = env.GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->tensor_ctor.Value()))
    throw Napi::TypeError::New(env, std::string(name) + ": expected a tensor handle");
  TensorHandle* h = TensorHandle::Unwrap(v.As<Napi::Object>());
  if (h->disposed || !h->tensor.storage) throw Napi::TypeError::New(env, std::string(name) + ": tensor has been disposed");
  return h->tensor;
}

// A non-empty JS array of tensor handles, each named name[i] in errors. With `distinct`, no two
// may share memory (for callers that write every tensor of the list in place).
inline std::vector<Tensor*> unwrap_list(Napi::Env env, const Napi::Value& v, const std::string& name, bool distinct = true) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, name + ": expected an array of tensor handles");
  auto arr = v.As<Napi::Array>();
  if (arr.Length() == 0) throw Napi::RangeError::New(env, name + ": expected at least one tensor, got an empty array");
  std::vector<Tensor*> ts;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string at = name + "[" + std::to_string(i) + "]";
    Tensor& t = unwrap(env, arr.Get(i), at.c_str());
    for (size_t j = 0; distinct && j < ts.size(); ++j)
      if (ts[j]->storage == t.storage)
        throw Napi::RangeError::New(env, at + ": shares its memory with " + name + "[" + std::to_string(j) + "]");
    ts.push_back(&t);
  }
  return ts;
}

inline Napi::Value TensorHandle::ToFloat32Array(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    if (disposed || !tensor.storage) throw Napi::TypeError::New(env, "tensor has been disposed");
    auto out = Napi::Float32Array::New(env, size_t(tensor.numel()));
    if (tensor.device == Device::CPU) ra::convert_to_f32(tensor.dtype, tensor.storage->ptr, out.Data(), out.ElementLength());
    else ra::cuda::download_f32(tensor.storage->ptr, tensor.dtype, out.Data(), out.ElementLength());
    return out;
  });
}

// ops_addon.cpp: adds the training ops (linear, embedding, norms, ...) to the exports.
// The float32 view of a CPU tensor: the tensor itself, or a converted copy.
struct F32 {
  std::vector<float> copy;
  const float* ptr;
  explicit F32(const Tensor& t) : ptr(nullptr) {
    if (t.device != Device::CPU) throw UserError("TypeError", "expected a CPU tensor");
    if (t.dtype == DType::F32) ptr = t.f32();
    else { copy = t.to_f32(); ptr = copy.data(); }
  }
};

// A result tensor that kernels write as float32: in place when its dtype is float32,
// else into scratch that is rounded to the dtype once, in done().
struct Output {
  Tensor tensor;
  std::vector<float> scratch;
  float* ptr;
  Output(std::vector<int64_t> shape, DType dtype) : tensor(Tensor::empty(std::move(shape), dtype, Device::CPU)) {
    if (dtype == DType::F32) {
      ptr = tensor.f32();
    } else {
      scratch.resize(size_t(tensor.numel()));
      ptr = scratch.data();
    }
  }
  Tensor done() {
    if (!scratch.empty()) ra::convert_from_f32(tensor.dtype, scratch.data(), tensor.storage->ptr, scratch.size());
    return std::move(tensor);
  }
};

template <size_t N>
inline Napi::Array wrap_all(Napi::Env env, Output (&outs)[N]) {
  auto result = Napi::Array::New(env, N);
  for (size_t i = 0; i < N; ++i) result.Set(uint32_t(i), wrap(env, outs[i].done()));
  return result;
}
template <size_t N>
inline Napi::Array wrap_all(Napi::Env env, Tensor (&ts)[N]) {
  auto result = Napi::Array::New(env, N);
  for (size_t i = 0; i < N; ++i) result.Set(uint32_t(i), wrap(env, std::move(ts[i])));
  return result;
}

// An Int32Array of exactly `length` elements.
inline Napi::Int32Array int32s(const Napi::Value& v, const char* name, int64_t length) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw UserError("TypeError", std::string(name) + ": expected an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  if (int64_t(a.ElementLength()) != length)
    throw UserError("RangeError", std::string(name) + ": expected length " + std::to_string(length) + ", got " +
                                      std::to_string(a.ElementLength()));
  return a;
}

using AddonFunction = std::pair<const char*, Napi::Value (*)(const Napi::CallbackInfo&)>;
template <size_t N>
void export_all(Napi::Env env, Napi::Object exports, const AddonFunction (&fns)[N]) {
  for (const auto& [name, fn] : fns) exports.Set(name, Napi::Function::New(env, fn, name));
}

void register_ops(Napi::Env env, Napi::Object exports);
void register_groups(Napi::Env env, Napi::Object exports);

}  // namespace ra::napi
