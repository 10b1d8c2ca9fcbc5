// The N-API functions of process groups and the ring: in-process groups (worker threads of
// one launch()), ring attention over them (CPU or CUDA tensors), and NCCL groups between
// processes with ring attention over those. lib/group.ts and lib/ring.ts check the
// arguments with user-facing messages; the checks here only keep a bad call from crashing.
#include <napi.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "cuda/ring_cuda.h"
#include "napi_util.h"
#include "nccl/group.h"
#include "ring/ring_attention.h"
#include "ring/signature.h"

namespace ra::napi {

namespace {

// Empty CUDA results of a ring call: [out, lse] and [dq, dk, dv].
struct FwdOuts {
  Tensor t[2];
};
struct BwdOuts {
  Tensor t[3];
};
FwdOuts cuda_fwd_outputs(const Tensor& q, const ra::ring::RingShape& s) {
  return {{Tensor::empty(q.shape, q.dtype, Device::CUDA), Tensor::empty({s.batch, s.heads, s.seq}, DType::F32, Device::CUDA)}};
}
BwdOuts cuda_bwd_outputs(const Tensor& q, const Tensor& k) {
  return {{Tensor::empty(q.shape, q.dtype, Device::CUDA), Tensor::empty(k.shape, k.dtype, Device::CUDA),
           Tensor::empty(k.shape, k.dtype, Device::CUDA)}};
}

// ---- groups (in-process transport) ----

int64_t group_id(const Napi::Value& v) { return v.As<Napi::Number>().Int64Value(); }

Napi::Value GroupCreate(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    return Napi::Number::New(env, double(ra::ring::create_group(info[0].As<Napi::Number>().Int32Value(),
                                                                info[1].As<Napi::Number>().Int64Value())));
  });
}
Napi::Value GroupAbort(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::ring::find_group(group_id(info[0]))->abort(info[1].As<Napi::String>().Utf8Value());
    return env.Undefined();
  });
}
Napi::Value GroupLeave(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto group = ra::ring::find_group(group_id(info[0]));
    const int rank = info[1].As<Napi::Number>().Int32Value();
    if (rank < 0 || rank >= group->world_size()) throw UserError("RangeError", "rank " + std::to_string(rank) + " is not in this group");
    group->leave(rank, info[2].ToBoolean());
    return env.Undefined();
  });
}
Napi::Value GroupDestroy(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::ring::destroy_group(group_id(info[0]));
    return env.Undefined();
  });
}

// The transport of rank info[1] in group info[0]; ranks (and a peer in info[2], when given)
// are range-checked here because the group indexes its tables with them.
ra::ring::LocalTransport transport(const Napi::CallbackInfo& info, bool has_peer = false) {
  auto group = ra::ring::find_group(group_id(info[0]));
  const int rank = info[1].As<Napi::Number>().Int32Value(), world = group->world_size();
  if (rank < 0 || rank >= world) throw UserError("RangeError", "rank " + std::to_string(rank) + " is not in this group");
  if (has_peer) {
    const int peer = info[2].As<Napi::Number>().Int32Value();
    if (peer < 0 || peer >= world) throw UserError("RangeError", "peer " + std::to_string(peer) + " is not in this group");
  }
  return ra::ring::LocalTransport(std::move(group), rank);
}

// groupSend(id, rank, peer, tensor); groupRecv(id, rank, peer, into)
// The values travel as float32 with the sent dtype after them, so that recv() refuses another
// dtype as it refuses another element count: over NCCL neither can be checked (the bytes just
// differ: the recv hangs or reads them as another type), and a script tried on a 'local' group
// should fail here first.
Napi::Value GroupSend(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto t = transport(info, true);
    const Tensor& x = unwrap(env, info[3], "tensor");
    const size_t n = size_t(x.numel());
    auto block = std::make_shared<std::vector<float>>(n + 1);  // the values, then the dtype
    x.read_f32(block->data());
    block->back() = float(static_cast<int>(x.dtype));
    t.send(info[2].As<Napi::Number>().Int32Value(), ra::ring::TAG_USER, std::move(block));
    return env.Undefined();
  });
}
Napi::Value GroupRecv(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto t = transport(info, true);
    const Tensor into = unwrap(env, info[3], "into");
    const int peer = info[2].As<Napi::Number>().Int32Value();
    auto block = t.recv(peer, ra::ring::TAG_USER);
    const DType sent = static_cast<DType>(int(block->back()));
    block->pop_back();
    const std::string rule = "; send() and recv() must agree in dtype and element count (an NCCL group cannot check it)";
    if (block->size() != size_t(into.numel()))
      throw UserError("RangeError", "into: rank " + std::to_string(peer) + " sent " + std::to_string(block->size()) +
                                        " elements, this tensor holds " + std::to_string(into.numel()) + rule);
    if (sent != into.dtype)
      throw UserError("TypeError", "into: rank " + std::to_string(peer) + " sent " + ra::dtype_name(sent) + ", this tensor is " +
                                       ra::dtype_name(into.dtype) + rule);
    if (into.device == Device::CPU) ra::convert_from_f32(into.dtype, block->data(), into.storage->ptr, block->size());
    else ra::cuda::upload_f32(block->data(), into.storage->ptr, into.dtype, block->size());
    return env.Undefined();
  });
}
// groupAllReduce(id, rank, tensors): each summed in place, float32 accumulation, as one collective
Napi::Value GroupAllReduce(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto t = transport(info);
    std::vector<Tensor> list = unwrap_list(env, info[2], "t");
    const std::vector<Tensor*> ts = pointers(list);
    size_t total = 0;
    for (const Tensor* x : ts) total += size_t(x->numel());
    std::vector<float> values(total);  // every tensor, one after the other
    float* at = values.data();
    for (const Tensor* x : ts) {
      x->read_f32(at);
      at += x->numel();
    }
    ra::ring::Collective call{"allReduce", {}};
    for (const Tensor* x : ts) call.parts.push_back(std::to_string(x->numel()) + " " + ra::dtype_name(x->dtype) + " elements");
    t.all_reduce_sum(values.data(), values.size(), call);
    at = values.data();
    for (Tensor* x : ts) {
      const size_t n = size_t(x->numel());
      if (x->device == Device::CPU) ra::convert_from_f32(x->dtype, at, x->storage->ptr, n);
      else ra::cuda::upload_f32(at, x->storage->ptr, x->dtype, n);
      at += n;
    }
    return env.Undefined();
  });
}
Napi::Value GroupBarrier(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    transport(info).barrier();
    return env.Undefined();
  });
}

// The ring calls' arguments from `at` on: causal, scale, zigzag, then optionally (benchmarks
// only) the parts to run (0 both, 1 compute only, 2 transfers only) and whether to time each
// step into `times`, then deterministic (backward), this shard's document ids, and (tests only)
// the step at which this rank fails.
ra::ring::RingShape ring_shape(const Napi::CallbackInfo& info, size_t at, const Tensor& q, const Tensor& k,
                               std::vector<ra::ring::StepTime>& times) {
  if (q.shape.size() != 4 || k.shape.size() != 4 || q.shape[0] != k.shape[0] || q.shape[1] != k.shape[1] ||
      q.shape[3] != k.shape[3] || k.shape[2] == 0 || q.shape[2] % k.shape[2] != 0)
    throw UserError("RangeError", "ringAttention: inconsistent shapes");
  ra::ring::RingShape s{int(q.shape[0]), int(q.shape[1]), int(q.shape[2]), int(k.shape[2]), int(q.shape[3]),
                        info[at + 1].As<Napi::Number>().FloatValue(), info[at].ToBoolean(), info[at + 2].ToBoolean()};
  if (info.Length() > at + 3 && info[at + 3].IsNumber()) {
    const int parts = info[at + 3].As<Napi::Number>().Int32Value();
    if (parts < 0 || parts > 2) throw UserError("RangeError", "parts: expected 0, 1 or 2");
    s.parts = static_cast<ra::ring::Parts>(parts);
  }
  if (info.Length() > at + 4 && info[at + 4].ToBoolean()) s.step_times = &times;
  s.deterministic = info.Length() > at + 5 && info[at + 5].ToBoolean();
  if (info.Length() > at + 6 && !info[at + 6].IsUndefined()) s.docs = int32s(info[at + 6], "documentIds", q.shape[0] * q.shape[1]).Data();
  if (info.Length() > at + 7 && info[at + 7].IsNumber()) s.fail_at_step = info[at + 7].As<Napi::Number>().Int32Value();
  return s;
}
// A ring call's results, then, when its steps were timed, a Float64Array of [compute, transfer,
// whole] milliseconds per step.
Napi::Value with_times(Napi::Env env, Napi::Array results, const ra::ring::RingShape& s) {
  if (!s.step_times) return results;
  auto a = Napi::Float64Array::New(env, 3 * s.step_times->size());
  for (size_t i = 0; i < s.step_times->size(); ++i) {
    const auto& st = (*s.step_times)[i];
    a[3 * i] = st.compute_ms, a[3 * i + 1] = st.transfer_ms, a[3 * i + 2] = st.whole_ms;
  }
  results.Set(results.Length(), a);
  return results;
}

// A rank that fails inside the ring loop aborts its group: peers waiting for its blocks fail
// at once with its error, and no later call (a caller that caught the error) takes a stale
// block or offer left in the mailboxes.
template <typename F>
void aborting_group_on_error(ra::ring::LocalTransport& t, F&& loop) {
  try {
    loop();
  } catch (const std::exception& e) {
    t.abort("rank " + std::to_string(t.rank()) + " failed in ring attention: " + e.what());
    throw;
  }
}
// One ring call on this rank: the ranks first compare their arguments (ring/signature.h), and a
// failure, there or in `loop`, aborts the group.
template <typename F>
void ring_call(ra::ring::LocalTransport& t, const ra::ring::RingShape& s, const Tensor& q, bool backward, F&& loop) {
  aborting_group_on_error(t, [&] {
    ra::ring::agree_in_process(t, ra::ring::call_signature(s, q.dtype, q.device, backward));
    loop();
  });
}

// ringForward(id, rank, q, k, v, causal, scale, zigzag[, parts, timeSteps, deterministic, documentIds, failAtStep]) -> [out, lse[, times]]
Napi::Value RingForward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto t = transport(info);
    const Tensor &q = unwrap(env, info[2], "q"), &k = unwrap(env, info[3], "k"), &v = unwrap(env, info[4], "v");
    ra::check_attention_operands("ringAttention", q, k, v);
    std::vector<ra::ring::StepTime> times;
    auto s = ring_shape(info, 5, q, k, times);
    if (q.device == Device::CUDA) {
      auto r = cuda_fwd_outputs(q, s);
      ring_call(t, s, q, false, [&] { ra::cuda::ring_forward(t, s, q, k, v, r.t[0], r.t[1]); });
      return with_times(env, wrap_all(env, r.t), s);
    }
    F32 q32(q), k32(k), v32(v);
    Output outs[] = {{q.shape, q.dtype}, {{s.batch, s.heads, s.seq}, DType::F32}};
    ring_call(t, s, q, false, [&] { ra::ring::ring_forward(t, s, q32.ptr, k32.ptr, v32.ptr, outs[0].ptr, outs[1].ptr); });
    return with_times(env, wrap_all(env, outs), s);
  });
}

// ringBackward(id, rank, dout, q, k, v, out, lse, causal, scale, zigzag[, parts, timeSteps, deterministic, documentIds, failAtStep]) -> [dq, dk, dv[, times]]
Napi::Value RingBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto t = transport(info);
    const Tensor &dout = unwrap(env, info[2], "dout"), &q = unwrap(env, info[3], "q"), &k = unwrap(env, info[4], "k"),
                 &v = unwrap(env, info[5], "v"), &out = unwrap(env, info[6], "out"), &lse = unwrap(env, info[7], "lse");
    ra::check_attention_operands("ringAttentionBackward", q, k, v, &dout, &out, &lse);
    std::vector<ra::ring::StepTime> times;
    auto s = ring_shape(info, 8, q, k, times);
    if (q.device == Device::CUDA) {
      auto r = cuda_bwd_outputs(q, k);
      ring_call(t, s, q, true, [&] { ra::cuda::ring_backward(t, s, dout, q, k, v, out, lse, r.t[0], r.t[1], r.t[2]); });
      return with_times(env, wrap_all(env, r.t), s);
    }
    F32 do32(dout), q32(q), k32(k), v32(v), o32(out), l32(lse);
    Output outs[] = {{q.shape, q.dtype}, {k.shape, k.dtype}, {v.shape, v.dtype}};
    ring_call(t, s, q, true, [&] {
      ra::ring::ring_backward(t, s, do32.ptr, q32.ptr, k32.ptr, v32.ptr, o32.ptr, l32.ptr, outs[0].ptr, outs[1].ptr,
                              outs[2].ptr);
    });
    return with_times(env, wrap_all(env, outs), s);
  });
}

// ringPlan(rank, worldSize, seq, causal, zigzag) -> per step [qLen, kLen, causal(0|1)] (skip: [0, 0, 0]).
// What each ring step computes, for tests and benchmarks of the work balance.
Napi::Value RingPlan(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const int rank = info[0].As<Napi::Number>().Int32Value(), n = info[1].As<Napi::Number>().Int32Value();
    ra::ring::RingShape s{1, info[2].As<Napi::Number>().Int32Value(), 1, 1, 1, 1.f, info[3].ToBoolean(), info[4].ToBoolean()};
    auto steps = Napi::Array::New(env, size_t(n));
    for (int step = 0; step < n; ++step) {
      auto p = ra::ring::plan(s, rank, (rank - step + n) % n);
      auto row = Napi::Array::New(env, 3);
      row.Set(0u, p.skip ? 0 : p.q_len);
      row.Set(1u, p.skip ? 0 : p.k_len);
      row.Set(2u, !p.skip && p.causal ? 1 : 0);
      steps.Set(uint32_t(step), row);
    }
    return steps;
  });
}

// ---- NCCL groups (between processes) ----

// ncclLoad(path) -> NCCL's version code
Napi::Value NcclLoad(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const auto& api = ra::nccl::load(info[0].As<Napi::String>().Utf8Value());
    int version = 0;
    api.GetVersion(&version);
    return Napi::Number::New(env, version);
  });
}

Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto id = ra::nccl::unique_id();
    auto out = Napi::Uint8Array::New(env, sizeof(id));
    std::memcpy(out.Data(), &id, sizeof(id));
    return out;
  });
}

// ncclGroupCreate(id: Uint8Array(128), rank, worldSize, device, timeoutMs) -> group id
Napi::Value NcclGroupCreate(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto bytes = info[0].As<Napi::Uint8Array>();
    ra::nccl::ncclUniqueId id;
    if (bytes.ByteLength() != sizeof(id)) throw UserError("RangeError", "the NCCL unique id must have 128 bytes");
    std::memcpy(&id, bytes.Data(), sizeof(id));
    auto n = [&](int i) { return info[i].As<Napi::Number>(); };
    return Napi::Number::New(env, double(ra::nccl::create_group(id, n(1).Int32Value(), n(2).Int32Value(),
                                                                n(3).Int32Value(), n(4).Int64Value())));
  });
}

Napi::Value NcclGroupDestroy(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::nccl::destroy_group(group_id(info[0]));
    return env.Undefined();
  });
}

// ncclSend(group, tensor, peer); ncclRecv(group, into, peer); ncclAllReduce(group, tensors); ncclBarrier(group)
Napi::Value NcclSend(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::nccl::send(group_id(info[0]), unwrap(env, info[1], "t"), info[2].As<Napi::Number>().Int32Value());
    return env.Undefined();
  });
}
Napi::Value NcclRecv(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    Tensor into = unwrap(env, info[1], "into");
    ra::nccl::recv(group_id(info[0]), into, info[2].As<Napi::Number>().Int32Value());
    return env.Undefined();
  });
}
Napi::Value NcclAllReduce(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto list = unwrap_list(env, info[1], "t");
    ra::nccl::all_reduce_sum(group_id(info[0]), pointers(list));
    return env.Undefined();
  });
}
// ncclAllReduceAsync(group, tensors) -> ticket; ncclWaitAllReduce(group, ticket)
Napi::Value NcclAllReduceAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    auto list = unwrap_list(env, info[1], "t");
    return Napi::Number::New(env, double(ra::nccl::all_reduce_sum_async(group_id(info[0]), pointers(list))));
  });
}
Napi::Value NcclWaitAllReduce(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::nccl::wait_all_reduce(group_id(info[0]), info[1].As<Napi::Number>().Int64Value());
    return env.Undefined();
  });
}
Napi::Value NcclBarrier(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    ra::nccl::barrier(group_id(info[0]));
    return env.Undefined();
  });
}

// ncclRingForward(group, q, k, v, causal, scale, zigzag[, parts, timeSteps, deterministic, documentIds, failAtStep]) -> [out, lse[, times]] (CUDA tensors)
Napi::Value NcclRingForward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &q = unwrap(env, info[1], "q"), &k = unwrap(env, info[2], "k"), &v = unwrap(env, info[3], "v");
    ra::check_attention_operands("ringAttention", q, k, v);
    std::vector<ra::ring::StepTime> times;
    auto s = ring_shape(info, 4, q, k, times);
    auto r = cuda_fwd_outputs(q, s);
    ra::cuda::ring_forward_nccl(group_id(info[0]), s, q, k, v, r.t[0], r.t[1]);
    return with_times(env, wrap_all(env, r.t), s);
  });
}

// ncclRingBackward(group, dout, q, k, v, out, lse, causal, scale, zigzag[, parts, timeSteps, deterministic, documentIds, failAtStep]) -> [dq, dk, dv[, times]]
Napi::Value NcclRingBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&](Napi::Env env) -> Napi::Value {
    const Tensor &dout = unwrap(env, info[1], "dout"), &q = unwrap(env, info[2], "q"), &k = unwrap(env, info[3], "k"),
                 &v = unwrap(env, info[4], "v"), &out = unwrap(env, info[5], "out"), &lse = unwrap(env, info[6], "lse");
    ra::check_attention_operands("ringAttentionBackward", q, k, v, &dout, &out, &lse);
    std::vector<ra::ring::StepTime> times;
    auto s = ring_shape(info, 7, q, k, times);
    auto r = cuda_bwd_outputs(q, k);
    ra::cuda::ring_backward_nccl(group_id(info[0]), s, dout, q, k, v, out, lse, r.t[0], r.t[1], r.t[2]);
    return with_times(env, wrap_all(env, r.t), s);
  });
}

}  // namespace

void register_groups(Napi::Env env, Napi::Object exports) {
  const AddonFunction fns[] = {
      {"groupCreate", GroupCreate},
      {"groupAbort", GroupAbort},
      {"groupLeave", GroupLeave},
      {"groupDestroy", GroupDestroy},
      {"groupSend", GroupSend},
      {"groupRecv", GroupRecv},
      {"groupAllReduce", GroupAllReduce},
      {"groupBarrier", GroupBarrier},
      {"ringForward", RingForward},
      {"ringBackward", RingBackward},
      {"ringPlan", RingPlan},
      {"ncclLoad", NcclLoad},
      {"ncclUniqueId", NcclUniqueId},
      {"ncclGroupCreate", NcclGroupCreate},
      {"ncclGroupDestroy", NcclGroupDestroy},
      {"ncclSend", NcclSend},
      {"ncclRecv", NcclRecv},
      {"ncclAllReduce", NcclAllReduce},
      {"ncclAllReduceAsync", NcclAllReduceAsync},
      {"ncclWaitAllReduce", NcclWaitAllReduce},
      {"ncclBarrier", NcclBarrier},
      {"ncclRingForward", NcclRingForward},
      {"ncclRingBackward", NcclRingBackward},
  };
  export_all(env, exports, fns);
}

}  // namespace ra::napi
