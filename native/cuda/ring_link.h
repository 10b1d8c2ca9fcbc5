// The CUDA ring's plumbing, for ring_cuda.cu alone: its streams and events, the links that
// move blocks between ring neighbours (device copies between in-process ranks, NCCL between
// processes), and the timer of each step (benchmarks).
#pragma once
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "check.h"
#include "../nccl/group.h"
#include "../ring/ring_attention.h"

namespace ra::cuda::ring_io {

struct Stream {
  cudaStream_t s;
  Stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(s); }
};

struct Event {
  cudaEvent_t e;
  Event() { check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"); }
  ~Event() { cudaEventDestroy(e); }  // safe while pending: released once it completes
  void record(cudaStream_t s) { check(cudaEventRecord(e, s), "cudaEventRecord"); }
  void wait_on(cudaStream_t s) const { check(cudaStreamWaitEvent(s, e, 0), "cudaStreamWaitEvent"); }
};

// Two timing events around some work on one stream (benchmarks).
struct Span {
  cudaEvent_t begin = nullptr, end = nullptr;
  bool recorded = false;
};

// Block traffic between ring neighbours, for one rank: send to rank + 1, receive from rank - 1.
class Link {
 public:
  enum Kind { KV = 0, DKV = 1 };
  virtual ~Link() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // Enqueues on `comm` the send of `send` (whose data `comm` already waits for) and the
  // receive into `recv` once `recv_free` (if any) has completed. Does not wait. With `span`
  // (benchmarks), records its events around the data movement itself, after those waits.
  virtual void exchange(Kind kind, const void* send, void* recv, size_t bytes, cudaStream_t comm,
                        const Event* recv_free, struct Span* span = nullptr) = 0;
  // Before the buffers are freed: every send has completed (in `compute`'s order, or waited for).
  virtual void finish(cudaStream_t compute, cudaStream_t comm) = 0;
  // After an error mid-loop: waits (bounded) until our streams are idle. True when a peer may
  // still read our buffers, or a transfer of ours may still use them (their memory must then
  // not go back to the cache).
  virtual bool drain_after_error(cudaStream_t compute, cudaStream_t comm) noexcept = 0;
};

// In-process peers (threads): a block is offered to the next rank (its address and an event
// after which it holds the data); that rank copies it device-to-device on its communication
// stream and answers with a receipt, whose event the sender waits on before writing the
// buffer again.
struct Offer {
  const void* ptr;
  size_t bytes;
  Event ready;
};
struct Receipt {
  Event copied;
};

class LocalLink : public Link {
 public:
  explicit LocalLink(ring::LocalTransport& t)
      : t_(t), next_((t.rank() + 1) % t.world_size()), prev_((t.rank() + t.world_size() - 1) % t.world_size()) {}
  int rank() const override { return t_.rank(); }
  int world() const override { return t_.world_size(); }

  void exchange(Kind kind, const void* send, void* recv, size_t bytes, cudaStream_t comm, const Event* recv_free,
                Span* span) override {
    auto o = std::make_shared<Offer>();
    o->ptr = send, o->bytes = bytes;
    o->ready.record(comm);
    ++outstanding_[kind];  // before the post: if the post throws, the offer may still have gone
    t_.post(next_, kTag[kind], o);
    reclaim(kind, comm, 1);  // `recv` is the buffer offered last time: the next rank has copied it
    if (recv_free) recv_free->wait_on(comm);
    auto in = std::static_pointer_cast<Offer>(t_.take(prev_, kTag[kind]));
    if (in->bytes != bytes)
      throw UserError("RangeError", "received a block of " + std::to_string(in->bytes) + " bytes from rank " +
                                        std::to_string(prev_) + ", expected " + std::to_string(bytes) +
                                        ": every rank must pass shards of the same shape and dtype, and documentIds on every rank or none");
    in->ready.wait_on(comm);
    if (span) check(cudaEventRecord(span->begin, comm), "cudaEventRecord");
    check(cudaMemcpyAsync(recv, in->ptr, bytes, cudaMemcpyDeviceToDevice, comm), "device copy");
    if (span) check(cudaEventRecord(span->end, comm), "cudaEventRecord"), span->recorded = true;
    auto r = std::make_shared<Receipt>();
    r->copied.record(comm);
    t_.post(prev_, kAckTag[kind], r);
  }
  void finish(cudaStream_t compute, cudaStream_t) override {
    reclaim(KV, compute, 0);
    reclaim(DKV, compute, 0);
  }
  // Our streams only wait on events already recorded, so they drain. A peer may have taken an
  // offer and queued its copy from our buffer without our seeing the receipt; an offer whose
  // receipt we took, one of our streams waited on, and those streams are drained.
  bool drain_after_error(cudaStream_t compute, cudaStream_t comm) noexcept override {
    cudaStreamSynchronize(comm);
    cudaStreamSynchronize(compute);
    return outstanding_[KV] + outstanding_[DKV] > 0;
  }

 private:
  static constexpr int kTag[2] = {ring::TAG_DEV_KV, ring::TAG_DEV_DKV};
  static constexpr int kAckTag[2] = {ring::TAG_DEV_KV_ACK, ring::TAG_DEV_DKV_ACK};
  // Makes `s` wait until the next rank has copied all but the last `keep` of our offers.
  void reclaim(Kind kind, cudaStream_t s, int keep) {
    for (; outstanding_[kind] > keep; --outstanding_[kind])
      std::static_pointer_cast<Receipt>(t_.take(next_, kAckTag[kind]))->copied.wait_on(s);
  }
  ring::LocalTransport& t_;
  const int next_, prev_;
  int outstanding_[2] = {0, 0};  // offers whose receipt we have not taken
};

// Processes over NCCL: a grouped send/recv on the ring's communication stream. NCCL errors
// and hangs surface in finish(), which polls the stream against the group's timeout.
class NcclLink : public Link {
 public:
  explicit NcclLink(int64_t group) : g_(group), rank_(nccl::group_rank(group)), world_(nccl::group_world_size(group)) {}
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  void exchange(Kind, const void* send, void* recv, size_t bytes, cudaStream_t comm, const Event* recv_free,
                Span* span) override {
    if (recv_free) recv_free->wait_on(comm);
    if (span) check(cudaEventRecord(span->begin, comm), "cudaEventRecord");
    nccl::ring_exchange(g_, send, recv, bytes, comm);  // its time includes waiting for the peer to post
    if (span) check(cudaEventRecord(span->end, comm), "cudaEventRecord"), span->recorded = true;
  }
  void finish(cudaStream_t, cudaStream_t comm) override { nccl::wait_stream(g_, comm, "ring attention transfers"); }
  // NCCL work may wait on a dead peer: polled against the group's timeout, which aborts the
  // communicator (and so ends that work) before the compute stream, which may wait on it.
  // When that wait fails, the communication stream may still hold transfers the compute
  // stream never waited for: their buffers stay out of the cache (a leak on a failed job,
  // rather than memory handed out while a transfer may still write it).
  bool drain_after_error(cudaStream_t compute, cudaStream_t comm) noexcept override {
    bool drained = true;
    try {
      nccl::wait_stream(g_, comm, "ring attention transfers (after an error)");
    } catch (...) {
      drained = false;
    }
    cudaStreamSynchronize(compute);
    return !drained;
  }

 private:
  int64_t g_;
  int rank_, world_;
};

// Timing events for RingShape::step_times (benchmarks); none are made when nobody asked.
// Per step: the compute kernel, and up to two transfers (K/V; dK/dV in the backward).
class StepTimer {
 public:
  StepTimer(const ring::RingShape& s, int steps) : out_(s.step_times), steps_(size_t(steps)) {
    if (!out_) return;
    spans_.resize(3 * steps_ + 1);
    try {
      for (Span& sp : spans_)
        for (cudaEvent_t* e : {&sp.begin, &sp.end}) check(cudaEventCreate(e), "cudaEventCreate");
    } catch (...) {
      release();  // no destructor runs for a constructor that throws
      throw;
    }
  }
  ~StepTimer() { release(); }
  Span* compute(int step) { return out_ ? &spans_[3 * size_t(step)] : nullptr; }
  Span* transfer(int step, int which) { return out_ ? &spans_[3 * size_t(step) + 1 + size_t(which)] : nullptr; }
  static void begin(Span* sp, cudaStream_t s) {
    if (sp) check(cudaEventRecord(sp->begin, s), "cudaEventRecord");
  }
  static void end(Span* sp, cudaStream_t s) {
    if (sp) check(cudaEventRecord(sp->end, s), "cudaEventRecord"), sp->recorded = true;
  }
  // Where the last step ends: after the loop is queued on `compute`, which by then waits for
  // every block it takes (recorded before the link's finish, which may poll on the host).
  void loop_end(cudaStream_t compute) {
    if (out_) check(cudaEventRecord(spans_.back().begin, compute), "cudaEventRecord");
  }
  // Waits for the streams and fills step_times. A step's whole time runs from its compute's
  // start to the next step's (the last: to loop_end); a step without a kernel computes 0.
  void finish(cudaStream_t compute, cudaStream_t comm) {
    if (!out_) return;
    const Span& last = spans_.back();
    check(cudaStreamSynchronize(comm), "cudaStreamSynchronize");
    check(cudaStreamSynchronize(compute), "cudaStreamSynchronize");
    auto ms = [](cudaEvent_t a, cudaEvent_t b) {
      float t = 0;
      check(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
      return double(t);
    };
    out_->assign(steps_, ring::StepTime{});
    for (size_t k = 0; k < steps_; ++k) {
      ring::StepTime& st = (*out_)[k];
      const Span& c = spans_[3 * k];
      if (c.recorded) st.compute_ms = ms(c.begin, c.end);
      for (size_t w = 1; w <= 2; ++w)
        if (spans_[3 * k + w].recorded) st.transfer_ms += ms(spans_[3 * k + w].begin, spans_[3 * k + w].end);
      st.whole_ms = ms(c.begin, k + 1 < steps_ ? spans_[3 * (k + 1)].begin : last.begin);
    }
  }

 private:
  void release() {
    for (Span& sp : spans_)
      for (cudaEvent_t e : {sp.begin, sp.end})
        if (e) cudaEventDestroy(e);
  }
  std::vector<ring::StepTime>* out_;
  size_t steps_;
  std::vector<Span> spans_;
};

}  // namespace ra::cuda::ring_io
