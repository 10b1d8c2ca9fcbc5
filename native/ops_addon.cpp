// The N-API functions of the training ops (native/cpu/ops.h). lib/ops.ts checks the
// arguments with user-facing messages; the checks here only keep a call that bypasses it
// from reading or writing out of bounds.
#include <napi.h>

#include <cstdint>
#include <string>
#include <utility>

#include "common.h"
#include "cpu/ops.h"
#include "napi_util.h"

namespace ra::napi {

namespace {

namespace ops = ra::cpu::ops;

// A float32 CPU tensor argument, optionally of exactly `numel` elements.
Tensor& f32(Napi::Env env, const Napi::Value& v, const char* name, int64_t numel = -1) {
  Tensor& t = unwrap(env, v, name);
  if (t.device != Device::CPU || t.dtype != DType::F32)
    throw UserError("TypeError", std::string(name) + ": needs float32 cpu tensors; CUDA ops are not implemented yet");
  if (numel >= 0 && t.numel() != numel)
    throw UserError("RangeError", std::string(name) + ": expected " + std::to_string(numel) + " elements, got " +
                                      std::to_string(t.numel()));
  return t;
}
Tensor* f32_or_null(Napi::Env env, const Napi::Value& v, const char* name, int64_t numel) {
  return v.IsNull() || v.IsUndefined() ? nullptr : &f32(env, v, name, numel);
}

// A tensor of rank >= 1: rows = shape[0], cols = the product of the rest.
int64_t rows_of(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
int64_t cols_of(const Tensor& t) { return t.shape.empty() || t.shape[0] == 0 ? 0 : t.numel() / t.shape[0]; }

// An output must not share memory with an input the kernel reads after writing it.
void distinct(const Tensor* out, const char* out_name, const Tensor& in, const char* in_name) {
  if (out && out->storage == in.storage)
    throw UserError("RangeError", std::string(out_name) + ": must not be the same memory as " + in_name);
}

Napi::Int32Array int32s(const Napi::Value& v, const char* name, int64_t length) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw UserError("TypeError", std::string(name) + ": expected an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  if (int64_t(a.ElementLength()) != length)
    throw UserError("RangeError", std::string(name) + ": expected length " + std::to_string(length) + ", got " +
                                      std::to_string(a.ElementLength()));
  return a;
}
// Every a[i] in [0, hi), or equal to also_ok (outside the int32 range: no exception).
void check_range(const Napi::Int32Array& a, const char* name, int64_t hi, int64_t also_ok = INT64_MIN) {
  for (size_t i = 0; i < a.ElementLength(); ++i)
    if ((a[i] < 0 || a[i] >= hi) && a[i] != also_ok)
      throw UserError("RangeError", std::string(name) + "[" + std::to_string(i) + "]: " + std::to_string(a[i]) +
                                        " is outside [0, " + std::to_string(hi) + ")");
}

double num(const Napi::Value& v) { return v.As<Napi::Number>().DoubleValue(); }
int64_t int64(const Napi::Value& v) { return v.As<Napi::Number>().Int64Value(); }

// linear(x [M,K], w [N,K]) -> y [M,N]
Napi::Value Linear(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &x = f32(env, info[0], "x"), &w = f32(env, info[1], "w");
    const int64_t M = rows_of(x), K = cols_of(x), N = rows_of(w);
    f32(env, info[1], "w", N * K);
    Tensor y = Tensor::empty({M, N}, DType::F32, Device::CPU);
    ops::linear_forward(x.f32(), w.f32(), y.f32(), M, K, N);
    return wrap(env, std::move(y));
  });
}

// linearBackward(dy [M,N], x [M,K], w [N,K], dx [M,K] | null, dw [N,K])
Napi::Value LinearBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &x = f32(env, info[1], "x"), &w = f32(env, info[2], "w");
    const int64_t M = rows_of(x), K = cols_of(x), N = rows_of(w);
    const Tensor& dy = f32(env, info[0], "dy", M * N);
    f32(env, info[2], "w", N * K);
    Tensor* dx = f32_or_null(env, info[3], "dx", M * K);
    Tensor& dw = f32(env, info[4], "dw", N * K);
    distinct(dx, "dx", dy, "dy"), distinct(dx, "dx", w, "w"), distinct(&dw, "dw", dy, "dy"), distinct(&dw, "dw", x, "x");
    ops::linear_backward(dy.f32(), x.f32(), w.f32(), dx ? dx->f32() : nullptr, dw.f32(), M, K, N);
    return env.Undefined();
  });
}

// embedding(ids Int32Array[M], table [V,C]) -> [M,C]
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor& table = f32(env, info[1], "table");
    if (!info[0].IsTypedArray()) throw UserError("TypeError", "ids: expected an Int32Array");
    auto ids = int32s(info[0], "ids", int64_t(info[0].As<Napi::TypedArray>().ElementLength()));
    const int64_t M = int64_t(ids.ElementLength()), V = rows_of(table), C = cols_of(table);
    check_range(ids, "ids", V);
    Tensor y = Tensor::empty({M, C}, DType::F32, Device::CPU);
    ops::embedding_forward(ids.Data(), table.f32(), y.f32(), M, C);
    return wrap(env, std::move(y));
  });
}

// embeddingBackward(ids, dy [M,C], dtable [V,C])
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor& dtable = f32(env, info[2], "dtable");
    const int64_t V = rows_of(dtable), C = cols_of(dtable);
    const Tensor& dy = f32(env, info[1], "dy");
    if (cols_of(dy) != C) throw UserError("RangeError", "dy: expected rows of " + std::to_string(C) + " elements");
    auto ids = int32s(info[0], "ids", rows_of(dy));
    check_range(ids, "ids", V);
    distinct(&dtable, "dtable", dy, "dy");
    ops::embedding_backward(ids.Data(), dy.f32(), dtable.f32(), rows_of(dy), C);
    return env.Undefined();
  });
}

// rmsNorm(x [M,C], w [C], eps) -> [y, rstd [M]]
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor& x = f32(env, info[0], "x");
    const int64_t M = rows_of(x), C = cols_of(x);
    const Tensor& w = f32(env, info[1], "w", C);
    Tensor y = Tensor::empty(x.shape, DType::F32, Device::CPU), rstd = Tensor::empty({M}, DType::F32, Device::CPU);
    ops::rmsnorm_forward(x.f32(), w.f32(), float(num(info[2])), y.f32(), rstd.f32(), M, C);
    auto out = Napi::Array::New(env, 2);
    out.Set(0u, wrap(env, std::move(y)));
    out.Set(1u, wrap(env, std::move(rstd)));
    return out;
  });
}

// rmsNormBackward(dy, x, w, rstd, dx, dw)
Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor& x = f32(env, info[1], "x");
    const int64_t M = rows_of(x), C = cols_of(x);
    const Tensor &dy = f32(env, info[0], "dy", M * C), &w = f32(env, info[2], "w", C), &rstd = f32(env, info[3], "rstd", M);
    Tensor &dx = f32(env, info[4], "dx", M * C), &dw = f32(env, info[5], "dw", C);
    distinct(&dx, "dx", dy, "dy"), distinct(&dx, "dx", x, "x"), distinct(&dx, "dx", w, "w"), distinct(&dx, "dx", rstd, "rstd");
    distinct(&dw, "dw", dy, "dy"), distinct(&dw, "dw", x, "x"), distinct(&dw, "dw", rstd, "rstd"), distinct(&dw, "dw", dx, "dx");
    ops::rmsnorm_backward(dy.f32(), x.f32(), w.f32(), rstd.f32(), dx.f32(), dw.f32(), M, C);
    return env.Undefined();
  });
}

// rope(x [M,H,D], positions Int32Array[M], theta, inverse) -> [M,H,D]
Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor& x = f32(env, info[0], "x");
    if (x.shape.size() != 3 || x.shape[2] % 2 != 0) throw UserError("RangeError", "x: expected shape [M, H, D] with D even");
    const int64_t M = x.shape[0], H = x.shape[1], D = x.shape[2];
    auto pos = int32s(info[1], "positions", M);
    Tensor y = Tensor::empty(x.shape, DType::F32, Device::CPU);
    ops::rope(x.f32(), pos.Data(), y.f32(), M, H, D, num(info[2]), info[3].ToBoolean());
    return wrap(env, std::move(y));
  });
}

struct FfnArgs {
  int64_t M, C, F, block;
  const Tensor *x, *wg, *wu, *wd;
};
FfnArgs ffn_args(Napi::Env env, const Napi::CallbackInfo& info, int first) {
  FfnArgs a{};
  a.x = &f32(env, info[first], "x");
  a.wg = &f32(env, info[first + 1], "wGate");
  a.M = rows_of(*a.x), a.C = cols_of(*a.x), a.F = rows_of(*a.wg);
  f32(env, info[first + 1], "wGate", a.F * a.C);
  a.wu = &f32(env, info[first + 2], "wUp", a.F * a.C);
  a.wd = &f32(env, info[first + 3], "wDown", a.C * a.F);
  a.block = int64(info[first + 4]);
  if (a.block < 1) throw UserError("RangeError", "blockRows: expected an integer >= 1");
  return a;
}

// ffn(x [M,C], wGate [F,C], wUp [F,C], wDown [C,F], blockRows) -> y [M,C]
Napi::Value Ffn(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto a = ffn_args(env, info, 0);
    Tensor y = Tensor::empty(a.x->shape, DType::F32, Device::CPU);
    ops::ffn_forward(a.x->f32(), a.wg->f32(), a.wu->f32(), a.wd->f32(), y.f32(), a.M, a.C, a.F, a.block);
    return wrap(env, std::move(y));
  });
}

// ffnBackward(dy, x, wGate, wUp, wDown, blockRows, dx, dwGate, dwUp, dwDown)
Napi::Value FfnBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto a = ffn_args(env, info, 1);
    const Tensor& dy = f32(env, info[0], "dy", a.M * a.C);
    Tensor &dx = f32(env, info[6], "dx", a.M * a.C), &dwg = f32(env, info[7], "dwGate", a.F * a.C),
           &dwu = f32(env, info[8], "dwUp", a.F * a.C), &dwd = f32(env, info[9], "dwDown", a.C * a.F);
    const Tensor* ins[] = {&dy, a.x, a.wg, a.wu, a.wd};
    const char* in_names[] = {"dy", "x", "wGate", "wUp", "wDown"};
    Tensor* outs[] = {&dx, &dwg, &dwu, &dwd};
    const char* out_names[] = {"dx", "dwGate", "dwUp", "dwDown"};
    for (int o = 0; o < 4; ++o) {
      for (int i = 0; i < 5; ++i) distinct(outs[o], out_names[o], *ins[i], in_names[i]);
      for (int p = 0; p < o; ++p) distinct(outs[o], out_names[o], *outs[p], out_names[p]);
    }
    ops::ffn_backward(dy.f32(), a.x->f32(), a.wg->f32(), a.wu->f32(), a.wd->f32(), dx.f32(), dwg.f32(), dwu.f32(),
                      dwd.f32(), a.M, a.C, a.F, a.block);
    return env.Undefined();
  });
}

// crossEntropy(h [M,C], wHead [V,C], targets Int32Array[M], chunkRows, ignoreIndex, gradScale,
//              dh [M,C] | null, dwHead [V,C] | null) -> [lossSum, count]
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &h = f32(env, info[0], "h"), &w = f32(env, info[1], "wHead");
    const int64_t M = rows_of(h), C = cols_of(h), V = rows_of(w);
    f32(env, info[1], "wHead", V * C);
    auto targets = int32s(info[2], "targets", M);
    const int32_t ignore = info[4].As<Napi::Number>().Int32Value();
    check_range(targets, "targets", V, ignore);
    const int64_t chunk = int64(info[3]);
    if (chunk < 1) throw UserError("RangeError", "chunkRows: expected an integer >= 1");
    Tensor* dh = f32_or_null(env, info[6], "dh", M * C);
    Tensor* dw = f32_or_null(env, info[7], "dwHead", V * C);
    distinct(dh, "dh", h, "h"), distinct(dh, "dh", w, "wHead"), distinct(dw, "dwHead", h, "h"), distinct(dw, "dwHead", w, "wHead");
    if (dh && dw) distinct(dh, "dh", *dw, "dwHead");
    auto r = ops::cross_entropy(h.f32(), w.f32(), targets.Data(), M, C, V, chunk, ignore, float(num(info[5])),
                                dh ? dh->f32() : nullptr, dw ? dw->f32() : nullptr);
    auto out = Napi::Array::New(env, 2);
    out.Set(0u, Napi::Number::New(env, r.loss_sum));
    out.Set(1u, Napi::Number::New(env, double(r.count)));
    return out;
  });
}

// adamw(param, grad, m, v, step, lr, beta1, beta2, eps, weightDecay)
Napi::Value AdamW(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor& p = f32(env, info[0], "param");
    const int64_t n = p.numel();
    const Tensor& g = f32(env, info[1], "grad", n);
    Tensor &m = f32(env, info[2], "m", n), &v = f32(env, info[3], "v", n);
    ops::adamw(p.f32(), g.f32(), m.f32(), v.f32(), n, int64(info[4]), float(num(info[5])), float(num(info[6])),
               float(num(info[7])), float(num(info[8])), float(num(info[9])));
    return env.Undefined();
  });
}

Napi::Value SumOfSquares(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor& t = f32(env, info[0], "t");
    return Napi::Number::New(env, ops::sum_of_squares(t.f32(), t.numel()));
  });
}
Napi::Value Scale(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor& t = f32(env, info[0], "t");
    ops::scale(t.f32(), t.numel(), float(num(info[1])));
    return env.Undefined();
  });
}
Napi::Value Add(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor& a = f32(env, info[0], "a");
    const Tensor& b = f32(env, info[1], "b", a.numel());
    ops::add(a.f32(), b.f32(), a.numel());
    return env.Undefined();
  });
}
Napi::Value Zero(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor& t = f32(env, info[0], "t");
    ops::zero(t.f32(), t.numel());
    return env.Undefined();
  });
}

// view(t, shape) -> a handle on the same memory with another shape (same element count)
Napi::Value View(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor& t = unwrap(env, info[0], "t");
    auto arr = info[1].As<Napi::Array>();
    Tensor v = t;
    v.shape.assign(arr.Length(), 0);
    for (uint32_t i = 0; i < arr.Length(); ++i) v.shape[i] = arr.Get(i).As<Napi::Number>().Int64Value();
    if (v.numel() != t.numel()) throw UserError("RangeError", "shape: element count differs from the tensor's");
    return wrap(env, std::move(v));
  });
}

}  // namespace

void register_ops(Napi::Env env, Napi::Object exports) {
  const std::pair<const char*, Napi::Value (*)(const Napi::CallbackInfo&)> fns[] = {
      {"opsLinear", Linear},
      {"opsLinearBackward", LinearBackward},
      {"opsEmbedding", Embedding},
      {"opsEmbeddingBackward", EmbeddingBackward},
      {"opsRmsNorm", RmsNorm},
      {"opsRmsNormBackward", RmsNormBackward},
      {"opsRope", Rope},
      {"opsFfn", Ffn},
      {"opsFfnBackward", FfnBackward},
      {"opsCrossEntropy", CrossEntropy},
      {"opsAdamW", AdamW},
      {"opsSumOfSquares", SumOfSquares},
      {"opsScale", Scale},
      {"opsAdd", Add},
      {"opsZero", Zero},
      {"opsView", View},
  };
  for (const auto& [name, fn] : fns) exports.Set(name, Napi::Function::New(env, fn, name));
}

}  // namespace ra::napi
