// The N-API pieces shared by the files that define addon functions (addon.cpp,
// group_addon.cpp, ops_addon.cpp): the tensor handle class, the per-instance data holding its
// constructor, and the helpers that turn native errors into JS exceptions and move tensors
// (and float32 views of them) across the boundary.
#pragma once
#include <napi.h>

#include <atomic>
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

// Tagged at construction: only our own handles are ever unwrapped as one (a prototype or
// Symbol.hasInstance can be faked from JS; a type tag cannot).
inline constexpr napi_type_tag kTensorHandleTag{0x72696e6761747465ULL, 0x6e74696f6e544831ULL};

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    // Plain functions rather than InstanceMethod, whose unwrap would throw a bare napi error
    // for a disposed handle (which has no native object left, see Dispose).
    Napi::Function ctor = DefineClass(env, "TensorHandle", {});
    Napi::Object proto = ctor.Get("prototype").As<Napi::Object>();
    proto.DefineProperties({Napi::PropertyDescriptor::Function(env, proto, "toFloat32Array", ToFloat32Array),
                            Napi::PropertyDescriptor::Function(env, proto, "dispose", Dispose)});
    return ctor;
  }
  explicit TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {
    napi_type_tag_object(info.Env(), info.This(), &kTensorHandleTag);
    ++alive;
  }
  ~TensorHandle() override {
    ReportHostBytes(Env(), -held_bytes());
    --alive;
  }
  // Native handle objects not yet freed, in every thread (hostMemoryStats().handles).
  static inline std::atomic<int64_t> alive{0};

  // Empty only for a handle made from JS with `new`, which never held a tensor.
  Tensor tensor;

  void Adopt(Napi::Env env, Tensor t) {
    tensor = std::move(t);
    ReportHostBytes(env, held_bytes());
  }

  enum class Found { Live, Disposed, NotAHandle };
  // The live handle behind `v`, or why there is none.
  static std::pair<Found, TensorHandle*> of(napi_env env, napi_value v) {
    if (!ours(env, v)) return {Found::NotAHandle, nullptr};
    TensorHandle* h = wrapped(env, v);
    if (!h || !h->tensor.storage) return {Found::Disposed, nullptr};
    return {Found::Live, h};
  }

 private:
  static bool ours(napi_env env, napi_value v) {
    bool tagged = false;
    return napi_check_object_type_tag(env, v, &kTensorHandleTag, &tagged) == napi_ok && tagged;
  }
  // The native object behind one of our handles (ours()), empty or not; nullptr once disposed.
  static TensorHandle* wrapped(napi_env env, napi_value v) {
    void* p = nullptr;
    return napi_unwrap(env, v, &p) == napi_ok ? static_cast<TensorHandle*>(p) : nullptr;
  }
  int64_t held_bytes() const {
    return tensor.storage && tensor.device == Device::CPU ? int64_t(tensor.storage->bytes) : 0;
  }
  // Tells V8 how much host memory a tensor holds so that GC pressure is right. The C call,
  // not node-addon-api's throwing wrapper: this also runs in the destructor, possibly while
  // a worker's environment is being torn down, where an exception would abort the process.
  static void ReportHostBytes(napi_env env, int64_t delta) {
    int64_t total;
    if (delta != 0) napi_adjust_external_memory(env, delta, &total);
  }
  static Napi::Value ToFloat32Array(const Napi::CallbackInfo& info);  // defined below
  // Frees the native object now, not only its memory: a GC finalizer runs only once the event
  // loop turns (Node-API defers them), so in a synchronous training loop every disposed
  // handle's object would pile up until the loop ended. Idempotent.
  static Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (TensorHandle* h = ours(info.Env(), info.This()) ? wrapped(info.Env(), info.This()) : nullptr) {
      napi_remove_wrap(info.Env(), info.This(), nullptr);  // its finalizer goes too
      delete h;
    }
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

// A copy of the tensor behind a handle: it shares the memory, which it keeps alive for the
// call even if JS code that runs meanwhile (a getter of a later argument) disposes the handle.
inline Tensor unwrap(Napi::Env env, const Napi::Value& v, const char* name) {
  auto [found, h] = TensorHandle::of(env, v);
  if (found == TensorHandle::Found::NotAHandle) throw Napi::TypeError::New(env, std::string(name) + ": expected a tensor handle");
  if (found == TensorHandle::Found::Disposed) throw Napi::TypeError::New(env, std::string(name) + ": tensor has been disposed");
  return h->tensor;
}

// A non-empty JS array of tensor handles, each named name[i] in errors. With `distinct`, no two
// may share memory (for callers that write every tensor of the list in place).
inline std::vector<Tensor> unwrap_list(Napi::Env env, const Napi::Value& v, const std::string& name, bool distinct = true) {
  if (!v.IsArray()) throw Napi::TypeError::New(env, name + ": expected an array of tensor handles");
  auto arr = v.As<Napi::Array>();
  if (arr.Length() == 0) throw Napi::RangeError::New(env, name + ": expected at least one tensor, got an empty array");
  std::vector<Tensor> ts;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string at = name + "[" + std::to_string(i) + "]";
    Tensor t = unwrap(env, arr.Get(i), at.c_str());
    for (size_t j = 0; distinct && j < ts.size(); ++j)
      if (ts[j].storage == t.storage)
        throw Napi::RangeError::New(env, at + ": shares its memory with " + name + "[" + std::to_string(j) + "]");
    ts.push_back(std::move(t));
  }
  return ts;
}

// Pointers to a list's tensors, for the native calls that take them (valid while `ts` lives).
inline std::vector<Tensor*> pointers(std::vector<Tensor>& ts) {
  std::vector<Tensor*> out;
  for (Tensor& t : ts) out.push_back(&t);
  return out;
}

inline Napi::Value TensorHandle::ToFloat32Array(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const auto [found, h] = of(env, info.This());
    if (found == Found::NotAHandle) throw Napi::TypeError::New(env, "toFloat32Array: expected a tensor handle as this");
    if (found == Found::Disposed) throw Napi::TypeError::New(env, "tensor has been disposed");
    const Tensor t = h->tensor;
    auto out = Napi::Float32Array::New(env, size_t(t.numel()));
    if (t.device == Device::CPU) ra::convert_to_f32(t.dtype, t.storage->ptr, out.Data(), out.ElementLength());
    else ra::cuda::download_f32(t.storage->ptr, t.dtype, out.Data(), out.ElementLength());
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
