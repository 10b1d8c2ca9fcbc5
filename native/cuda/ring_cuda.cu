// The ring loop on CUDA. Each rank computes on one stream and moves blocks on another: at
// step k the transfer of the next K/V block into the spare buffer runs while the kernel
// works on the current one; events order the two, and two buffers alternate. Blocks move
// by device-to-device copies between in-process ranks, or by NCCL between processes. Inside
// the loop the host waits only for peer threads' posts (in-process), never for the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "check.h"
#include "device.h"
#include "flash/flash.h"
#include "../ring/signature.h"
#include "ring_cuda.h"
#include "ring_link.h"

namespace ra::cuda {
namespace {

using namespace ring_io;

__global__ void fill_kernel(float* p, float value, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) p[i] = value;
}

// dst += src over `len` values at `offset` of each of `batch` runs `stride` apart, in both
// halves (K's, then V's at `half`) of a dK/dV block.
__global__ void add_rows_kernel(float* dst, const float* src, int64_t batch, int64_t stride, int64_t offset,
                                int64_t len, int64_t half) {
  const int64_t n = 2 * batch * len;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t part = i / (batch * len), b = i / len % batch, j = part * half + b * stride + offset + i % len;
    dst[j] += src[j];
  }
}

// Kernel parameters for one step: queries [q_off, q_off + q_len) of this rank against keys
// [k_off, k_off + k_len) of the block in `kv` (K, then V, then with packed sequences the keys'
// document ids and their spans; the queries' are `own_docs`, laid out alike), as planned by
// ring::plan.
flash::FwdParams step_params(const ring::RingShape& s, const ring::Plan& pl, const char* q, const char* kv,
                             size_t esz, float* lse, const int* own_docs) {
  const int64_t qrow = int64_t(s.heads) * s.head_dim, krow = int64_t(s.kv_heads) * s.head_dim;
  const int64_t n_kv = int64_t(s.batch) * s.seq * krow;
  flash::FwdParams p{};
  p.q = q + pl.q_off * qrow * esz;
  p.k = kv + pl.k_off * krow * esz;
  p.v = kv + (n_kv + pl.k_off * krow) * esz;
  p.lse = lse + pl.q_off;
  p.q_batch_stride = p.o_batch_stride = s.seq * qrow;
  p.q_row_stride = p.o_row_stride = qrow;
  p.k_batch_stride = p.v_batch_stride = s.seq * krow;
  p.k_row_stride = p.v_row_stride = krow;
  p.lse_batch_stride = int64_t(s.heads) * s.seq;
  p.lse_head_stride = s.seq;
  p.batch = s.batch, p.heads = s.heads, p.kv_heads = s.kv_heads, p.head_dim = s.head_dim;
  p.seq_q = pl.q_len, p.seq_k = pl.k_len;
  p.scale = s.scale;
  p.causal_offset = 0;  // a diagonal block is square
  p.vec_ok = s.head_dim % 8 == 0;
  if (own_docs) {
    const int* key_docs = reinterpret_cast<const int*>(kv + 2 * n_kv * esz);
    const int64_t n_docs = int64_t(s.batch) * s.seq;
    p.doc_q = own_docs + pl.q_off, p.doc_q_spans = own_docs + n_docs, p.doc_q_shift = pl.q_off;
    p.doc_k = key_docs + pl.k_off, p.doc_k_spans = key_docs + n_docs, p.doc_k_shift = pl.k_off;
    p.doc_q_batch_stride = p.doc_k_batch_stride = s.seq;
  }
  return p;
}

// The loop's device buffers. On an error they would go back to the cache while our streams,
// or a peer's copy, may still use them: DrainOnError (declared after them, so it runs first)
// waits for our streams, and leaks the blocks that travel (K/V, dK/dV) when a peer may still
// read them or a transfer the drain could not wait for may still write them (a cudaFree under
// that copy, on a later out-of-memory, would break the whole CUDA context). The other buffers
// only our own streams use, and the drain has synchronised those: they are freed.
struct Buffers {
  std::vector<std::unique_ptr<Storage>> travelling, own;
  Storage& block(size_t bytes) { return add(travelling, bytes); }
  Storage& scratch(size_t bytes) { return add(own, bytes); }

 private:
  static Storage& add(std::vector<std::unique_ptr<Storage>>& to, size_t bytes) {
    to.push_back(std::make_unique<Storage>(Device::CUDA, bytes));
    return *to.back();
  }
};
struct DrainOnError {
  Link& link;
  cudaStream_t compute, comm;
  Buffers& buffers;
  const int exceptions = std::uncaught_exceptions();
  ~DrainOnError() {
    if (std::uncaught_exceptions() == exceptions) return;
    if (link.drain_after_error(compute, comm))
      for (auto& b : buffers.travelling) (void)b.release();  // deliberately leaked
  }
};

// Inputs were written on the default stream; our streams start after them. Called after our
// allocations: the caching allocator (shared by all threads) may hand us blocks that another
// rank freed while its work on them was still queued; that rank made the default stream wait
// for that work before freeing, so an event recorded here, later, covers it.
void after_default_stream(cudaStream_t a, cudaStream_t b) {
  Event e;
  e.record(nullptr);
  e.wait_on(a);
  e.wait_on(b);
}
// Later work on the default stream (and the caching allocator's reuse of our temporaries,
// which that work may receive) starts after everything this call enqueued.
void before_default_stream(cudaStream_t s) {
  Event e;
  e.record(s);
  e.wait_on(nullptr);
}

// Packed sequences: the ids of the shard's tokens, then their spans (flash::document_spans).
size_t doc_bytes(const ring::RingShape& s) {
  return s.docs ? (size_t(s.batch) * s.seq + flash::doc_span_ints(s.batch, s.seq)) * 4 : 0;
}

// The first K/V block: K, V and (packed sequences) the keys' document ids and spans, which are
// also this rank's queries' and are made once into `own_docs` for every step.
void pack_kv(const ring::RingShape& sh, void* kv, const Tensor& k, const Tensor& v, Storage* own_docs, cudaStream_t s) {
  const size_t bytes = k.storage->bytes;
  check(cudaMemcpyAsync(kv, k.storage->ptr, bytes, cudaMemcpyDeviceToDevice, s), "device copy");
  check(cudaMemcpyAsync(static_cast<char*>(kv) + bytes, v.storage->ptr, bytes, cudaMemcpyDeviceToDevice, s), "device copy");
  if (!own_docs) return;
  int* ids = static_cast<int*>(own_docs->ptr);
  const size_t n = size_t(sh.batch) * sh.seq;
  upload_async(sh.docs, ids, n * 4, s);
  flash::document_spans(ids, sh.batch, sh.seq, ids + n, s);
  check(cudaMemcpyAsync(static_cast<char*>(kv) + 2 * bytes, own_docs->ptr, doc_bytes(sh), cudaMemcpyDeviceToDevice, s),
        "device copy");
}
const int* docs_of(Storage* own_docs) { return own_docs ? static_cast<const int*>(own_docs->ptr) : nullptr; }

void forward_loop(Link& link, const ring::RingShape& s, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                  Tensor& lse) {
  const int N = link.world(), r = link.rank();
  const size_t esz = dtype_size(q.dtype), kv_bytes = 2 * k.storage->bytes + doc_bytes(s), n_q = size_t(q.numel());
  Stream compute, comm;
  Buffers buffers;
  Storage &kv0 = buffers.block(kv_bytes), &kv1 = buffers.block(kv_bytes), &acc = buffers.scratch(n_q * 4);
  Storage* own_docs = s.docs ? &buffers.scratch(doc_bytes(s)) : nullptr;
  Storage* kv[2] = {&kv0, &kv1};
  after_default_stream(compute.s, comm.s);  // after the allocations: see there
  DrainOnError drain{link, compute.s, comm.s, buffers};
  pack_kv(s, kv0.ptr, k, v, own_docs, compute.s);
  Event packed, computed[2], arrived;
  packed.record(compute.s);
  packed.wait_on(comm.s);
  // The running result stays float32 across steps and is rounded once at the end.
  zero(acc.ptr, n_q * 4, compute.s);
  fill_kernel<<<1024, 256, 0, compute.s>>>(lse.f32(), -INFINITY, size_t(lse.numel()));
  check(cudaGetLastError(), "fill launch");
  StepTimer timer(s, N);

  for (int step = 0; step < N; ++step) {
    const int cur = s.moves() ? step & 1 : 0;
    const bool move = s.moves() && step + 1 < N;
    // The next block moves on `comm` while the kernel below works on this one; kv[1 - cur]
    // is free once the previous step's kernel is done with it.
    if (move) {
      link.exchange(Link::KV, kv[cur]->ptr, kv[1 - cur]->ptr, kv_bytes, comm.s, step > 0 ? &computed[1 - cur] : nullptr,
                    timer.transfer(step, 0));
      arrived.record(comm.s);
    }
    s.fail_if_asked(step);
    const ring::Plan pl = ring::plan(s, r, (r - step + N) % N);
    StepTimer::begin(timer.compute(step), compute.s);
    if (!pl.skip && s.computes()) {
      auto p = step_params(s, pl, static_cast<const char*>(q.storage->ptr), static_cast<const char*>(kv[cur]->ptr), esz,
                           lse.f32(), docs_of(own_docs));
      p.out_accum = static_cast<float*>(acc.ptr) + pl.q_off * int64_t(s.heads) * s.head_dim;
      flash::forward(p, q.dtype, pl.causal, compute.s);
      StepTimer::end(timer.compute(step), compute.s);
    }
    computed[cur].record(compute.s);
    if (move) arrived.wait_on(compute.s);
  }
  timer.loop_end(compute.s);
  link.finish(compute.s, comm.s);
  timer.finish(compute.s, comm.s);
  f32_to_dtype(static_cast<float*>(acc.ptr), out.storage->ptr, out.dtype, n_q, compute.s);
  before_default_stream(compute.s);
}

void backward_loop(Link& link, const ring::RingShape& s, const Tensor& dout, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
  const int N = link.world(), r = link.rank();
  const size_t esz = dtype_size(q.dtype), kv_bytes = 2 * k.storage->bytes + doc_bytes(s), n_q = size_t(q.numel());
  const size_t n_kv = size_t(k.numel()), dkv_bytes = 2 * n_kv * 4;
  const int64_t qrow = int64_t(s.heads) * s.head_dim, krow = int64_t(s.kv_heads) * s.head_dim;
  Stream compute, comm;
  Buffers buffers;
  Storage &kv0 = buffers.block(kv_bytes), &kv1 = buffers.block(kv_bytes), &dkv0 = buffers.block(dkv_bytes),
          &dkv1 = buffers.block(dkv_bytes), &step_dkv = buffers.scratch(dkv_bytes), &dq_acc = buffers.scratch(n_q * 4),
          &delta = buffers.scratch(size_t(lse.numel()) * 4);
  Storage* own_docs = s.docs ? &buffers.scratch(doc_bytes(s)) : nullptr;
  Storage* kv[2] = {&kv0, &kv1};
  Storage* dkv[2] = {&dkv0, &dkv1};
  after_default_stream(compute.s, comm.s);
  DrainOnError drain{link, compute.s, comm.s, buffers};
  pack_kv(s, kv0.ptr, k, v, own_docs, compute.s);
  Event packed, computed[2], added, kv_arrived, dkv_arrived;
  packed.record(compute.s);
  packed.wait_on(comm.s);
  zero(dkv0.ptr, dkv_bytes, compute.s);
  zero(dq_acc.ptr, n_q * 4, compute.s);
  const ring::Plan whole{false, 0, s.seq, 0, s.seq, s.causal};
  auto wp = step_params(s, whole, static_cast<const char*>(q.storage->ptr), static_cast<const char*>(kv0.ptr), esz,
                        const_cast<float*>(lse.f32()), nullptr);  // delta needs no documents
  flash::compute_delta(wp, out.storage->ptr, dout.storage->ptr, static_cast<float*>(delta.ptr), q.dtype, compute.s);

  // dK/dV of a block travel with it, gathering every rank's contribution in float32, and
  // reach their owner with one extra hop after the last step. Each kernel writes this step's
  // contribution into step_dkv, not into the travelling block, so that it need not wait for
  // the block's arrival: only the add after it does, and the hop runs under the next kernel
  // (ring-flash-attention's order).
  const bool travels = N > 1 && s.moves();  // alone, a block never leaves (and NCCL is not asked to send to itself)
  StepTimer timer(s, N);
  for (int step = 0; step < N; ++step) {
    const int cur = s.moves() ? step & 1 : 0;
    const bool move = s.moves() && step + 1 < N;
    if (move) {
      link.exchange(Link::KV, kv[cur]->ptr, kv[1 - cur]->ptr, kv_bytes, comm.s, step > 0 ? &computed[1 - cur] : nullptr,
                    timer.transfer(step, 0));
      kv_arrived.record(comm.s);
    }
    s.fail_if_asked(step);
    const ring::Plan pl = ring::plan(s, r, (r - step + N) % N);
    // An empty range leaves step_dkv as it was: nothing to add.
    const bool computes = !pl.skip && s.computes() && pl.q_len > 0 && pl.k_len > 0;
    StepTimer::begin(timer.compute(step), compute.s);
    if (computes) {
      flash::BwdParams bp{};
      bp.fwd = step_params(s, pl, static_cast<const char*>(q.storage->ptr), static_cast<const char*>(kv[cur]->ptr), esz,
                           const_cast<float*>(lse.f32()), docs_of(own_docs));
      bp.dout = static_cast<const char*>(dout.storage->ptr) + pl.q_off * qrow * esz;
      bp.delta = static_cast<const float*>(delta.ptr) + pl.q_off;
      bp.dq_accum = static_cast<float*>(dq_acc.ptr) + pl.q_off * qrow;
      bp.dk_accum = static_cast<float*>(step_dkv.ptr) + pl.k_off * krow;
      bp.dv_accum = static_cast<float*>(step_dkv.ptr) + n_kv + pl.k_off * krow;
      bp.dkv_overwrite = true;  // rows [k_off, k_off + k_len): the add below reads no others
      bp.dq_batch_stride = s.seq * qrow, bp.dq_row_stride = qrow;
      bp.dk_batch_stride = s.seq * krow, bp.dk_row_stride = krow;
      bp.deterministic = s.deterministic;  // dQ's own pass adds (+=) into dq_acc like the atomics
      flash::backward(bp, q.dtype, pl.causal, compute.s);
      StepTimer::end(timer.compute(step), compute.s);
    }
    computed[cur].record(compute.s);  // kv[cur] is free for the next receive into it
    // dkv[cur] holds this block's dK/dV from the ranks before us (zeros at step 0); add ours.
    if (step > 0 && travels) dkv_arrived.wait_on(compute.s);
    if (computes) {
      const int64_t len = int64_t(pl.k_len) * krow;
      add_rows_kernel<<<unsigned(std::clamp<int64_t>((2 * s.batch * len + 255) / 256, 1, 4096)), 256, 0, compute.s>>>(
          static_cast<float*>(dkv[cur]->ptr), static_cast<const float*>(step_dkv.ptr), s.batch, int64_t(s.seq) * krow,
          int64_t(pl.k_off) * krow, len, int64_t(n_kv));
      check(cudaGetLastError(), "dK/dV add launch");
    }
    // The next kernel writes step_dkv only after this add (one stream); the hop waits for it.
    if (travels) {
      added.record(compute.s);
      added.wait_on(comm.s);
      link.exchange(Link::DKV, dkv[cur]->ptr, dkv[1 - cur]->ptr, dkv_bytes, comm.s, nullptr, timer.transfer(step, 1));
      dkv_arrived.record(comm.s);
    }
    if (move) kv_arrived.wait_on(compute.s);
  }
  if (travels) dkv_arrived.wait_on(compute.s);  // our own block's dK/dV, home after its last hop
  timer.loop_end(compute.s);
  link.finish(compute.s, comm.s);
  timer.finish(compute.s, comm.s);
  const float* mine = static_cast<const float*>(dkv[travels ? N & 1 : 0]->ptr);
  f32_to_dtype(static_cast<float*>(dq_acc.ptr), dq.storage->ptr, dq.dtype, n_q, compute.s);
  f32_to_dtype(mine, dk.storage->ptr, dk.dtype, n_kv, compute.s);
  f32_to_dtype(mine + n_kv, dv.storage->ptr, dv.dtype, n_kv, compute.s);
  before_default_stream(compute.s);
}

}  // namespace

void ring_forward(ring::LocalTransport& t, const ring::RingShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                  Tensor& out, Tensor& lse) {
  LocalLink link(t);
  forward_loop(link, s, q, k, v, out, lse);
}
void ring_backward(ring::LocalTransport& t, const ring::RingShape& s, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk,
                   Tensor& dv) {
  LocalLink link(t);
  backward_loop(link, s, dout, q, k, v, out, lse, dq, dk, dv);
}
// Over NCCL a rank cannot see what its peers passed, and blocks of different sizes would hang
// the transfers: before the first transfer of a new set of arguments, the ranks compare them.
static void agree_on_call(int64_t group, const ring::RingShape& s, DType dtype, bool backward) {
  ring::check_signatures(nccl::disagreement(group, ring::call_signature(s, dtype, Device::CUDA, backward),
                                            "comparing the ranks' ring arguments"));
}
// A failure inside the loop (its streams drained by then: DrainOnError) aborts the group, as
// the in-process ring aborts its transport: the peers' transfers of this call are left posted.
template <typename F>
static void aborting_on_error(int64_t group, F&& loop) {
  try {
    loop();
  } catch (...) {
    nccl::abort_group(group);
    throw;
  }
}
void ring_forward_nccl(int64_t group, const ring::RingShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       Tensor& out, Tensor& lse) {
  agree_on_call(group, s, q.dtype, false);
  aborting_on_error(group, [&] {
    NcclLink link(group);
    forward_loop(link, s, q, k, v, out, lse);
  });
}
void ring_backward_nccl(int64_t group, const ring::RingShape& s, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv) {
  agree_on_call(group, s, q.dtype, true);
  aborting_on_error(group, [&] {
    NcclLink link(group);
    backward_loop(link, s, dout, q, k, v, out, lse, dq, dk, dv);
  });
}

}  // namespace ra::cuda
