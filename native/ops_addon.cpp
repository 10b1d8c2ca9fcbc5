// The N-API functions of the training ops: float32 CPU tensors go to native/cpu/ops.h, CUDA
// tensors to native/cuda/ops/ops.h. lib/ops.ts checks the arguments with user-facing
// messages; the checks here only keep a call that bypasses it from reading or writing out
// of bounds (the CUDA ops check their dtypes themselves).
#include <napi.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/ops.h"
#include "cuda/ops/ops.h"
#include "napi_util.h"

namespace ra::napi {

namespace {

namespace ops = ra::cpu::ops;
namespace cuops = ra::cuda::ops;

// The tensor arguments of one call: all on the device of the first; on the CPU float32
// (the CUDA ops check their own dtypes). Optionally of exactly `numel` elements.
struct Args {
  Napi::Env env;
  const Tensor* first = nullptr;
  std::string first_name{};
  std::deque<Tensor> held{};  // the call's copies (a deque: references stay valid as it grows)

  Tensor& operator()(const Napi::Value& v, const char* name, int64_t numel = -1) {
    held.push_back(unwrap(env, v, name));
    return check(held.back(), name, numel);
  }
  Tensor& check(Tensor& t, const std::string& name, int64_t numel = -1) {
    if (!first) first = &t, first_name = name;
    if (t.device != first->device)
      throw UserError("TypeError", std::string(name) + ": device '" + device_name(t.device) + "' does not match " +
                                       first_name + "'s '" + device_name(first->device) + "'");
    if (t.device == Device::CPU && t.dtype != DType::F32)
      throw UserError("TypeError", std::string(name) + ": cpu ops take float32 tensors, got " + dtype_name(t.dtype));
    if (numel >= 0 && t.numel() != numel)
      throw UserError("RangeError", std::string(name) + ": expected " + std::to_string(numel) + " elements, got " +
                                        std::to_string(t.numel()));
    return t;
  }
  Tensor* or_null(const Napi::Value& v, const char* name, int64_t numel) {
    return v.IsNull() || v.IsUndefined() ? nullptr : &(*this)(v, name, numel);
  }
  bool cuda() const { return first && first->device == Device::CUDA; }
};

// A tensor of rank >= 1: rows = shape[0], cols = the product of the rest.
int64_t rows_of(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
int64_t cols_of(const Tensor& t) { return t.shape.empty() || t.shape[0] == 0 ? 0 : t.numel() / t.shape[0]; }

// An output must not share memory with an input the kernel reads after writing it.
void distinct(const Tensor* out, const char* out_name, const Tensor& in, const char* in_name) {
  if (out && out->storage == in.storage)
    throw UserError("RangeError", std::string(out_name) + ": must not be the same memory as " + in_name);
}

// A copy of the Int32Array of `length` indices, each in [0, hi) or equal to also_ok (outside
// the int32 range: no exception). Copied before it is checked: an array on a SharedArrayBuffer
// may change under a kernel that indexes memory with it.
std::vector<int32_t> checked_indices(const Napi::Value& v, const char* name, int64_t length, int64_t hi,
                                     int64_t also_ok = INT64_MIN) {
  const auto view = int32s(v, name, length);
  std::vector<int32_t> a(view.Data(), view.Data() + view.ElementLength());
  for (size_t i = 0; i < a.size(); ++i)
    if ((a[i] < 0 || a[i] >= hi) && a[i] != also_ok)
      throw UserError("RangeError", std::string(name) + "[" + std::to_string(i) + "]: " + std::to_string(a[i]) +
                                        " is outside [0, " + std::to_string(hi) + ")");
  return a;
}

double num(const Napi::Value& v) { return v.As<Napi::Number>().DoubleValue(); }
int64_t int64(const Napi::Value& v) { return v.As<Napi::Number>().Int64Value(); }

// linear(x [M,K], w [N,K]) -> y [M,N]
Napi::Value Linear(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor &x = a(info[0], "x"), &w = a(info[1], "w");
    const int64_t M = rows_of(x), K = cols_of(x), N = rows_of(w);
    a(info[1], "w", N * K);
    if (a.cuda()) return wrap(env, cuops::linear(x, w));
    Tensor y = Tensor::empty({M, N}, DType::F32, Device::CPU);
    ops::linear_forward(x.f32(), w.f32(), y.f32(), M, K, N);
    return wrap(env, std::move(y));
  });
}

// linearBackward(dy [M,N], x [M,K], w [N,K], dx [M,K] | null, dw [N,K])
Napi::Value LinearBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor &x = a(info[1], "x"), &w = a(info[2], "w");
    const int64_t M = rows_of(x), K = cols_of(x), N = rows_of(w);
    const Tensor& dy = a(info[0], "dy", M * N);
    a(info[2], "w", N * K);
    Tensor* dx = a.or_null(info[3], "dx", M * K);
    Tensor& dw = a(info[4], "dw", N * K);
    // dx is written before dw's product reads x: no output may share memory with an input or the other output.
    distinct(dx, "dx", dy, "dy"), distinct(dx, "dx", w, "w"), distinct(dx, "dx", x, "x");
    distinct(&dw, "dw", dy, "dy"), distinct(&dw, "dw", x, "x"), distinct(&dw, "dw", w, "w");
    if (dx) distinct(&dw, "dw", *dx, "dx");
    if (a.cuda()) cuops::linear_backward(dy, x, w, dx, dw);
    else ops::linear_backward(dy.f32(), x.f32(), w.f32(), dx ? dx->f32() : nullptr, dw.f32(), M, K, N);
    return env.Undefined();
  });
}

// embedding(ids Int32Array[M], table [V,C]) -> [M,C]
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor& table = a(info[1], "table");
    if (!info[0].IsTypedArray()) throw UserError("TypeError", "ids: expected an Int32Array");
    const int64_t V = rows_of(table), C = cols_of(table);
    const auto ids = checked_indices(info[0], "ids", int64_t(info[0].As<Napi::TypedArray>().ElementLength()), V);
    const int64_t M = int64_t(ids.size());
    if (a.cuda()) return wrap(env, cuops::embedding(ids.data(), M, table));
    Tensor y = Tensor::empty({M, C}, DType::F32, Device::CPU);
    ops::embedding_forward(ids.data(), table.f32(), y.f32(), M, C);
    return wrap(env, std::move(y));
  });
}

// embeddingBackward(ids, dy [M,C], dtable [V,C], paddingIdx (-1: none))
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    Tensor& dtable = a(info[2], "dtable");
    const int64_t V = rows_of(dtable), C = cols_of(dtable);
    const Tensor& dy = a(info[1], "dy");
    if (cols_of(dy) != C) throw UserError("RangeError", "dy: expected rows of " + std::to_string(C) + " elements");
    const auto ids = checked_indices(info[0], "ids", rows_of(dy), V);
    const int64_t skip = int64(info[3]);
    if (skip < -1 || skip >= V) throw UserError("RangeError", "paddingIdx: expected -1 or a row of dtable");
    distinct(&dtable, "dtable", dy, "dy");
    if (a.cuda()) cuops::embedding_backward(ids.data(), rows_of(dy), dy, dtable, int32_t(skip));
    else ops::embedding_backward(ids.data(), dy.f32(), dtable.f32(), rows_of(dy), C, int32_t(skip));
    return env.Undefined();
  });
}

// rmsNorm(x [M,C], w [C], eps) -> [y, rstd [M]]
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor& x = a(info[0], "x");
    const int64_t M = rows_of(x), C = cols_of(x);
    const Tensor& w = a(info[1], "w", C);
    const Device dev = x.device;
    Tensor y = Tensor::empty(x.shape, x.dtype, dev), rstd = Tensor::empty({M}, DType::F32, dev);
    if (a.cuda()) cuops::rmsnorm(x, w, float(num(info[2])), y, rstd);
    else ops::rmsnorm_forward(x.f32(), w.f32(), float(num(info[2])), y.f32(), rstd.f32(), M, C);
    auto out = Napi::Array::New(env, 2);
    out.Set(0u, wrap(env, std::move(y)));
    out.Set(1u, wrap(env, std::move(rstd)));
    return out;
  });
}

// rmsNormBackward(dy, x, w, rstd, dx, dw)
Napi::Value RmsNormBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor& x = a(info[1], "x");
    const int64_t M = rows_of(x), C = cols_of(x);
    const Tensor &dy = a(info[0], "dy", M * C), &w = a(info[2], "w", C), &rstd = a(info[3], "rstd", M);
    Tensor &dx = a(info[4], "dx", M * C), &dw = a(info[5], "dw", C);
    distinct(&dx, "dx", dy, "dy"), distinct(&dx, "dx", x, "x"), distinct(&dx, "dx", w, "w"), distinct(&dx, "dx", rstd, "rstd");
    distinct(&dw, "dw", dy, "dy"), distinct(&dw, "dw", x, "x"), distinct(&dw, "dw", rstd, "rstd"), distinct(&dw, "dw", dx, "dx");
    if (a.cuda()) cuops::rmsnorm_backward(dy, x, w, rstd, dx, dw);
    else ops::rmsnorm_backward(dy.f32(), x.f32(), w.f32(), rstd.f32(), dx.f32(), dw.f32(), M, C);
    return env.Undefined();
  });
}

// rope(x [M,H,D], positions Int32Array[M], invFreq Float64Array[D/2], inverse) -> [M,H,D]
Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor& x = a(info[0], "x");
    if (x.shape.size() != 3 || x.shape[2] % 2 != 0) throw UserError("RangeError", "x: expected shape [M, H, D] with D even");
    const int64_t M = x.shape[0], H = x.shape[1], D = x.shape[2];
    auto pos = int32s(info[1], "positions", M);
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
        int64_t(info[2].As<Napi::TypedArray>().ElementLength()) != D / 2)
      throw UserError("TypeError", "invFreq: expected a Float64Array of D/2 values");
    const double* inv_freq = info[2].As<Napi::Float64Array>().Data();
    if (a.cuda()) return wrap(env, cuops::rope(x, pos.Data(), inv_freq, info[3].ToBoolean()));
    Tensor y = Tensor::empty(x.shape, DType::F32, Device::CPU);
    ops::rope(x.f32(), pos.Data(), y.f32(), M, H, D, inv_freq, info[3].ToBoolean());
    return wrap(env, std::move(y));
  });
}

struct FfnArgs {
  int64_t M, C, F, block;
  const Tensor *x, *wg, *wu, *wd;
};
FfnArgs ffn_args(Args& a, const Napi::CallbackInfo& info, int first) {
  FfnArgs f{};
  f.x = &a(info[first], "x");
  f.wg = &a(info[first + 1], "wGate");
  f.M = rows_of(*f.x), f.C = cols_of(*f.x), f.F = rows_of(*f.wg);
  a(info[first + 1], "wGate", f.F * f.C);
  f.wu = &a(info[first + 2], "wUp", f.F * f.C);
  f.wd = &a(info[first + 3], "wDown", f.C * f.F);
  f.block = int64(info[first + 4]);
  if (f.block < 1) throw UserError("RangeError", "blockRows: expected an integer >= 1");
  return f;
}

// ffn(x [M,C], wGate [F,C], wUp [F,C], wDown [C,F], blockRows) -> y [M,C]
Napi::Value Ffn(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    auto f = ffn_args(a, info, 0);
    if (a.cuda()) return wrap(env, cuops::ffn(*f.x, *f.wg, *f.wu, *f.wd, f.block));
    Tensor y = Tensor::empty(f.x->shape, DType::F32, Device::CPU);
    ops::ffn_forward(f.x->f32(), f.wg->f32(), f.wu->f32(), f.wd->f32(), y.f32(), f.M, f.C, f.F, f.block);
    return wrap(env, std::move(y));
  });
}

// ffnBackward(dy, x, wGate, wUp, wDown, blockRows, dx, dwGate, dwUp, dwDown)
Napi::Value FfnBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor& dy = a(info[0], "dy");
    auto f = ffn_args(a, info, 1);
    a(info[0], "dy", f.M * f.C);
    Tensor &dx = a(info[6], "dx", f.M * f.C), &dwg = a(info[7], "dwGate", f.F * f.C),
           &dwu = a(info[8], "dwUp", f.F * f.C), &dwd = a(info[9], "dwDown", f.C * f.F);
    const Tensor* ins[] = {&dy, f.x, f.wg, f.wu, f.wd};
    const char* in_names[] = {"dy", "x", "wGate", "wUp", "wDown"};
    Tensor* outs[] = {&dx, &dwg, &dwu, &dwd};
    const char* out_names[] = {"dx", "dwGate", "dwUp", "dwDown"};
    for (int o = 0; o < 4; ++o) {
      for (int i = 0; i < 5; ++i) distinct(outs[o], out_names[o], *ins[i], in_names[i]);
      for (int p = 0; p < o; ++p) distinct(outs[o], out_names[o], *outs[p], out_names[p]);
    }
    if (a.cuda()) cuops::ffn_backward(dy, *f.x, *f.wg, *f.wu, *f.wd, f.block, dx, dwg, dwu, dwd);
    else ops::ffn_backward(dy.f32(), f.x->f32(), f.wg->f32(), f.wu->f32(), f.wd->f32(), dx.f32(), dwg.f32(), dwu.f32(),
                           dwd.f32(), f.M, f.C, f.F, f.block);
    return env.Undefined();
  });
}

// crossEntropy(h [M,C], wHead [V,C], targets Int32Array[M], chunkRows, ignoreIndex, gradScale,
//              dh [M,C] | null, dwHead [V,C] | null) -> [lossSum, count]
Napi::Value CrossEntropy(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const Tensor &h = a(info[0], "h"), &w = a(info[1], "wHead");
    const int64_t M = rows_of(h), C = cols_of(h), V = rows_of(w);
    a(info[1], "wHead", V * C);
    const int32_t ignore = info[4].As<Napi::Number>().Int32Value();
    const auto targets = checked_indices(info[2], "targets", M, V, ignore);
    const int64_t chunk = int64(info[3]);
    if (chunk < 1) throw UserError("RangeError", "chunkRows: expected an integer >= 1");
    Tensor* dh = a.or_null(info[6], "dh", M * C);
    Tensor* dw = a.or_null(info[7], "dwHead", V * C);
    distinct(dh, "dh", h, "h"), distinct(dh, "dh", w, "wHead"), distinct(dw, "dwHead", h, "h"), distinct(dw, "dwHead", w, "wHead");
    if (dh && dw) distinct(dh, "dh", *dw, "dwHead");
    double loss_sum;
    int64_t count;
    if (a.cuda()) {
      auto r = cuops::cross_entropy(h, w, targets.data(), chunk, ignore, float(num(info[5])), dh, dw);
      loss_sum = r.loss_sum, count = r.count;
    } else {
      auto r = ops::cross_entropy(h.f32(), w.f32(), targets.data(), M, C, V, chunk, ignore, float(num(info[5])),
                                  dh ? dh->f32() : nullptr, dw ? dw->f32() : nullptr);
      loss_sum = r.loss_sum, count = r.count;
    }
    auto out = Napi::Array::New(env, 2);
    out.Set(0u, Napi::Number::New(env, loss_sum));
    out.Set(1u, Napi::Number::New(env, double(count)));
    return out;
  });
}

// adamw(param, grad, m, v, step, lr, beta1, beta2, eps, weightDecay)
Napi::Value AdamW(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    Tensor& p = a(info[0], "param");
    const int64_t n = p.numel();
    const Tensor& g = a(info[1], "grad", n);
    Tensor &m = a(info[2], "m", n), &v = a(info[3], "v", n);
    distinct(&p, "param", g, "grad"), distinct(&m, "m", p, "param"), distinct(&m, "m", g, "grad");
    distinct(&v, "v", p, "param"), distinct(&v, "v", g, "grad"), distinct(&v, "v", m, "m");
    const int64_t step = int64(info[4]);
    const float lr = float(num(info[5])), b1 = float(num(info[6])), b2 = float(num(info[7])), eps = float(num(info[8])),
                wd = float(num(info[9]));
    if (a.cuda()) cuops::adamw(p, g, m, v, step, lr, b1, b2, eps, wd);
    else ops::adamw(p.f32(), g.f32(), m.f32(), v.f32(), n, step, lr, b1, b2, eps, wd);
    return env.Undefined();
  });
}

// adamwMulti(params[], grads[], m[], v[], copies[] (entries null) | null, weightDecay[], step, lr, beta1, beta2,
// eps, gradScale): adamw() over every params[i], after grads[i] *= gradScale (when not 1), then
// copies[i] = params[i] rounded to its dtype; one launch on CUDA. Named as lib/ops.ts names
// them: entries[i].param, ...
Napi::Value AdamWMulti(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    const char* names[4] = {"param", "grad", "m", "v"};
    std::vector<Tensor> lists[4];
    std::vector<Tensor*> ptrs[4];
    for (int l = 0; l < 4; ++l) lists[l] = unwrap_list(env, info[l], "entries[]." + std::string(names[l]), false);
    const size_t count = lists[0].size();
    const auto at = [](size_t i, const char* name) { return "entries[" + std::to_string(i) + "]." + name; };
    for (int l = 0; l < 4; ++l) {
      if (lists[l].size() != count) throw UserError("RangeError", std::string("entries: one ") + names[l] + " per param");
      for (size_t i = 0; i < count; ++i) ptrs[l].push_back(&a.check(lists[l][i], at(i, names[l]), lists[0][i].numel()));
    }
    std::vector<Tensor> copy_list;  // of any float dtype on the CPU; the CUDA op takes bfloat16
    copy_list.reserve(count);
    std::vector<Tensor*> copies(count, nullptr);
    if (!info[4].IsNull() && !info[4].IsUndefined()) {
      if (!info[4].IsArray() || info[4].As<Napi::Array>().Length() != count)
        throw UserError("TypeError", "copies: expected null or one entry per param");
      const auto arr = info[4].As<Napi::Array>();
      for (uint32_t i = 0; i < count; ++i) {
        const Napi::Value e = arr.Get(i);
        if (e.IsNull() || e.IsUndefined()) continue;
        const std::string name = at(i, "copy");
        copy_list.push_back(unwrap(env, e, name.c_str()));
        Tensor& c = copy_list.back();
        if (c.device != lists[0][i].device || c.numel() != lists[0][i].numel())
          throw UserError("RangeError", name + ": expected the device and element count of " + at(i, "param"));
        copies[i] = &c;
      }
    }
    // Every tensor is written (grad when scaled): none may share memory with another.
    std::unordered_map<const Storage*, std::string> seen;
    const auto claim = [&](const Tensor* t, const std::string& name) {
      const auto [it, fresh] = seen.emplace(t->storage.get(), name);
      if (!fresh) throw UserError("RangeError", name + ": must not be the same memory as " + it->second);
    };
    for (size_t i = 0; i < count; ++i) {
      for (int l = 0; l < 4; ++l) claim(ptrs[l][i], at(i, names[l]));
      if (copies[i]) claim(copies[i], at(i, "copy"));
    }
    if (!info[5].IsArray() || info[5].As<Napi::Array>().Length() != count)
      throw UserError("RangeError", "weightDecay: expected one number per param");
    const auto wds = info[5].As<Napi::Array>();
    std::vector<float> wd(count);
    for (uint32_t i = 0; i < count; ++i) wd[i] = float(num(wds.Get(i)));
    const int64_t step = int64(info[6]);
    const float lr = float(num(info[7])), b1 = float(num(info[8])), b2 = float(num(info[9])), eps = float(num(info[10])),
                gs = float(num(info[11]));
    if (a.cuda()) {
      cuops::adamw_multi(ptrs[0], ptrs[1], ptrs[2], ptrs[3], copies, wd, step, lr, b1, b2, eps, gs);
      return env.Undefined();
    }
    for (size_t i = 0; i < count; ++i) {  // what the CUDA kernel does per element, a tensor at a time
      Tensor &p = *ptrs[0][i], &g = *ptrs[1][i];
      if (gs != 1.f) ops::scale(g.f32(), g.numel(), gs);
      ops::adamw(p.f32(), g.f32(), ptrs[2][i]->f32(), ptrs[3][i]->f32(), p.numel(), step, lr, b1, b2, eps, wd[i]);
      if (copies[i]) ra::convert_from_f32(copies[i]->dtype, p.f32(), copies[i]->storage->ptr, size_t(p.numel()));
    }
    return env.Undefined();
  });
}

Napi::Value SumOfSquares(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    std::vector<const Tensor*> ts;
    std::vector<Tensor> list = unwrap_list(env, info[0], "t", /*distinct=*/false);
    for (Tensor& t : list) ts.push_back(&a.check(t, "t[" + std::to_string(ts.size()) + "]"));
    if (a.cuda()) return Napi::Number::New(env, cuops::sum_of_squares(ts));
    double total = 0;  // in list order, as the CUDA op adds
    for (const Tensor* t : ts) total += ops::sum_of_squares(t->f32(), t->numel());
    return Napi::Number::New(env, total);
  });
}
Napi::Value Scale(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    Tensor& t = a(info[0], "t");
    if (a.cuda()) cuops::scale(t, float(num(info[1])));
    else ops::scale(t.f32(), t.numel(), float(num(info[1])));
    return env.Undefined();
  });
}
Napi::Value Add(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args args{env};
    Tensor& a = args(info[0], "a");
    const Tensor& b = args(info[1], "b", a.numel());
    if (args.cuda()) cuops::add(a, b);
    else ops::add(a.f32(), b.f32(), a.numel());
    return env.Undefined();
  });
}
Napi::Value Zero(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Args a{env};
    Tensor& t = a(info[0], "t");
    if (a.cuda()) cuops::zero(t);
    else ops::zero(t.f32(), t.numel());
    return env.Undefined();
  });
}

// copy(dst, src): dst = src, converted to dst's dtype (same device, same element count)
Napi::Value Copy(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor dst = unwrap(env, info[0], "dst");
    const Tensor& src = unwrap(env, info[1], "src");
    if (src.device != dst.device) throw UserError("TypeError", "src: must be on dst's device");
    if (src.numel() != dst.numel()) throw UserError("RangeError", "src: must have dst's element count");
    // The same tensor, or a view of its memory (reshape keeps the dtype), holds the same
    // bytes already: nothing to copy.
    if (dst.storage == src.storage) return env.Undefined();
    const size_t n = size_t(dst.numel());
    if (dst.device == Device::CUDA) cuops::copy(dst, src);
    else if (src.dtype == dst.dtype) std::memcpy(dst.storage->ptr, src.storage->ptr, n * dtype_size(dst.dtype));
    else {
      std::vector<float> f = src.to_f32();
      ra::convert_from_f32(dst.dtype, f.data(), dst.storage->ptr, n);
    }
    return env.Undefined();
  });
}

// randomNormal(out Float32Array, seed, stream, std): out[i] ~ normal(0, std), in place
Napi::Value RandomNormal(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw UserError("TypeError", "out: expected a Float32Array");
    auto out = info[0].As<Napi::Float32Array>();
    const uint64_t seed = uint64_t(int64(info[1])), stream = uint64_t(int64(info[2]));
    ops::random_normal(out.Data(), int64_t(out.ElementLength()), seed, stream, num(info[3]));
    return env.Undefined();
  });
}

// cublasLoad(ltPath, path): opens cuBLAS for the CUDA matrix products (lib/ops.ts finds the files)
Napi::Value CublasLoad(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    cuops::load_cublas(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value());
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
  const AddonFunction fns[] = {
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
      {"opsAdamWMulti", AdamWMulti},
      {"opsSumOfSquares", SumOfSquares},
      {"opsScale", Scale},
      {"opsAdd", Add},
      {"opsZero", Zero},
      {"opsCopy", Copy},
      {"randomNormal", RandomNormal},
      {"opsView", View},
      {"cublasLoad", CublasLoad},
  };
  export_all(env, exports, fns);
}

}  // namespace ra::napi
