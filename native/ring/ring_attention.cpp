// The ring loop, forward and backward. Each step: hand the K/V block we hold to the next
// rank (posted before computing, so the transfer runs under the compute), compute on it,
// then take the next block from the previous rank. Which part of the block a step
// computes is decided by `plan`: causal + zigzag gives every rank half a block per step.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "../cpu/attention.h"
#include "ring_attention.h"

namespace ra::ring {

// Which queries of this rank attend to which keys of the block that started on `src`.
Plan plan(const RingShape& s, int rank, int src) {
  const int n = s.seq, half = s.seq / 2;
  if (!s.causal) return {false, 0, n, 0, n, false};
  if (src == rank) return {false, 0, n, 0, n, true};  // own block: the diagonal
  if (!s.zigzag) return src < rank ? Plan{false, 0, n, 0, n, false} : Plan{true};
  // zigzag: this rank holds chunks (r, 2N-1-r), the block chunks (src, 2N-1-src).
  if (src < rank) return {false, 0, n, 0, half, false};  // every query sees chunk src, none sees 2N-1-src
  return {false, half, n - half, 0, n, false};          // only chunk 2N-1-r sees them, and sees all
}

namespace {

// doc_k: the document ids of the block's keys (null without documents).
cpu::AttnParams params(const RingShape& s, const Plan& pl, const float* q, const float* k, const float* v, float* out,
                       float* lse, const int32_t* doc_k) {
  const int64_t qrow = int64_t(s.heads) * s.head_dim, krow = int64_t(s.kv_heads) * s.head_dim;
  cpu::AttnParams p{};
  p.q = q + pl.q_off * qrow;
  p.k = k + pl.k_off * krow;
  p.v = v + pl.k_off * krow;
  p.out = out + pl.q_off * qrow;
  p.lse = lse + pl.q_off;
  p.q_batch_stride = p.o_batch_stride = s.seq * qrow;
  p.q_row_stride = p.o_row_stride = qrow;
  p.k_batch_stride = s.seq * krow;
  p.k_row_stride = krow;
  p.lse_batch_stride = int64_t(s.heads) * s.seq;
  p.lse_head_stride = s.seq;
  p.batch = s.batch;
  p.heads = s.heads;
  p.kv_heads = s.kv_heads;
  p.head_dim = s.head_dim;
  p.seq_q = pl.q_len;
  p.seq_k = pl.k_len;
  p.scale = s.scale;
  p.causal = pl.causal;
  p.causal_offset = 0;  // a diagonal block is square
  p.accumulate = true;
  if (s.docs) {
    p.doc_q = s.docs + pl.q_off, p.doc_k = doc_k + pl.k_off;
    p.doc_q_batch_stride = p.doc_k_batch_stride = s.seq;
  }
  return p;
}

// params() over a finished forward: AttnParams' out/lse are writable for the forward's sake,
// but the backward passes only read them.
cpu::AttnParams read_params(const RingShape& s, const Plan& pl, const float* q, const float* k, const float* v,
                            const float* out, const float* lse, const int32_t* doc_k) {
  return params(s, pl, q, k, v, const_cast<float*>(out), const_cast<float*>(lse), doc_k);
}

// The backward of one step: the forward's arrays, plus the same slices of dout, delta, dq
// and the travelling dK/dV block.
cpu::AttnBwdParams bwd_params(const RingShape& s, const Plan& pl, const float* q, const float* kv, size_t n_kv,
                              const float* out, const float* lse, const float* dout, const float* delta, float* dq,
                              float* dkv, const int32_t* doc_k) {
  const int64_t qrow = int64_t(s.heads) * s.head_dim, krow = int64_t(s.kv_heads) * s.head_dim;
  cpu::AttnBwdParams b;
  b.fwd = read_params(s, pl, q, kv, kv + n_kv, out, lse, doc_k);
  b.dout = dout + pl.q_off * qrow;
  b.delta = delta + pl.q_off;
  b.dq = dq + pl.q_off * qrow;
  b.dk = dkv + pl.k_off * krow;
  b.dv = dkv + n_kv + pl.k_off * krow;
  return b;
}

// Per-step wall-clock timing for RingShape::step_times; free when nobody asked.
class StepClock {
 public:
  StepClock(const RingShape& s, int steps) : out_(s.step_times) {
    if (out_) out_->assign(size_t(steps), StepTime{});
  }
  // Runs f, adding its duration to the step's compute or transfer time.
  template <typename F>
  void compute(int step, F&& f) { timed(step, &StepTime::compute_ms, f); }
  template <typename F>
  void transfer(int step, F&& f) { timed(step, &StepTime::transfer_ms, f); }
  void begin(int step) {
    if (out_) (*out_)[size_t(step)].whole_ms = -now();
  }
  void end(int step) {
    if (out_) (*out_)[size_t(step)].whole_ms += now();
  }

 private:
  static double now() { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
  template <typename F>
  void timed(int step, double StepTime::*field, F&& f) {
    if (!out_) return f();
    const double t0 = now();
    f();
    (*out_)[size_t(step)].*field += now() - t0;
  }
  std::vector<StepTime>* out_;
};

size_t kv_elems(const RingShape& s) { return size_t(s.batch) * s.seq * s.kv_heads * s.head_dim; }

// A block from a rank whose shard has another shape would be read out of bounds: refuse it.
Block checked(Block b, size_t expected, int from, const char* what) {
  if (b->size() != expected)
    throw UserError("RangeError", std::string("received a ") + what + " of " + std::to_string(b->size()) +
                                      " values from rank " + std::to_string(from) + ", expected " +
                                      std::to_string(expected) + ": every rank must pass shards of the same shape, and documentIds on every rank or none");
  return b;
}

size_t doc_elems(const RingShape& s) { return s.docs ? size_t(s.batch) * s.seq : 0; }

// A K/V block: K, then V, then (packed sequences) the keys' document ids, their bytes copied
// into the float storage (ids are any int32: not all are exact as floats).
Block pack_kv(const RingShape& s, const float* k, const float* v) {
  const size_t n = kv_elems(s);
  auto b = std::make_shared<std::vector<float>>(2 * n + doc_elems(s));
  std::copy(k, k + n, b->begin());
  std::copy(v, v + n, b->begin() + n);
  if (s.docs) std::memcpy(b->data() + 2 * n, s.docs, doc_elems(s) * 4);
  return b;
}
// The block's document ids, copied out of its float storage (null without documents).
const int32_t* block_docs(const RingShape& s, const Block& b, std::vector<int32_t>& into) {
  if (!s.docs) return nullptr;
  into.resize(doc_elems(s));
  std::memcpy(into.data(), b->data() + 2 * kv_elems(s), into.size() * 4);
  return into.data();
}

}  // namespace

void ring_forward(Transport& t, const RingShape& s, const float* q, const float* k, const float* v, float* out,
                  float* lse) {
  const int N = t.world_size(), r = t.rank(), next = (r + 1) % N, prev = (r + N - 1) % N;
  const size_t n_kv = kv_elems(s);
  // The running result stays float32 across all steps; the caller rounds it once at the end.
  std::fill(out, out + size_t(s.batch) * s.seq * s.heads * s.head_dim, 0.f);
  std::fill(lse, lse + size_t(s.batch) * s.heads * s.seq, -std::numeric_limits<float>::infinity());
  Block kv = pack_kv(s, k, v);
  std::vector<int32_t> docs;
  StepClock clock(s, N);
  for (int step = 0; step < N; ++step) {
    clock.begin(step);
    const bool move = s.moves() && step + 1 < N;
    if (move) clock.transfer(step, [&] { t.send(next, TAG_KV, kv); });
    s.fail_if_asked(step);
    const Plan pl = plan(s, r, (r - step + N) % N);
    if (!pl.skip && s.computes())
      clock.compute(step, [&] {
        cpu::attention_forward(params(s, pl, q, kv->data(), kv->data() + n_kv, out, lse, block_docs(s, kv, docs)));
      });
    if (move) clock.transfer(step, [&] { kv = checked(t.recv(prev, TAG_KV), 2 * n_kv + doc_elems(s), prev, "K/V block"); });
    clock.end(step);
  }
}

void ring_backward(Transport& t, const RingShape& s, const float* dout, const float* q, const float* k,
                   const float* v, const float* out, const float* lse, float* dq, float* dk, float* dv) {
  const int N = t.world_size(), r = t.rank(), next = (r + 1) % N, prev = (r + N - 1) % N;
  const size_t n_kv = kv_elems(s), n_q = size_t(s.batch) * s.seq * s.heads * s.head_dim;
  const Plan whole{false, 0, s.seq, 0, s.seq, s.causal};
  std::vector<float> delta(size_t(s.batch) * s.heads * s.seq);
  cpu::attention_delta(read_params(s, whole, q, k, v, out, lse, s.docs), dout, delta.data());
  std::vector<int32_t> docs;

  std::fill(dq, dq + n_q, 0.f);
  Block kv = pack_kv(s, k, v);
  // dK/dV of a block travel with it, gathering every rank's contribution in float32, and
  // reach their owner with one extra hop after the last step.
  Block dkv = std::make_shared<std::vector<float>>(2 * n_kv, 0.f);
  StepClock clock(s, N);
  for (int step = 0; step < N; ++step) {
    clock.begin(step);
    const bool move = s.moves() && step + 1 < N;
    if (move) clock.transfer(step, [&] { t.send(next, TAG_KV, kv); });
    s.fail_if_asked(step);
    if (step > 0 && s.moves())
      clock.transfer(step, [&] { dkv = checked(t.recv(prev, TAG_DKV), 2 * n_kv, prev, "dK/dV block"); });
    const Plan pl = plan(s, r, (r - step + N) % N);
    if (!pl.skip && s.computes())
      clock.compute(step, [&] {
        cpu::attention_backward(
            bwd_params(s, pl, q, kv->data(), n_kv, out, lse, dout, delta.data(), dq, dkv->data(), block_docs(s, kv, docs)));
      });
    if (s.moves()) clock.transfer(step, [&] { t.send(next, TAG_DKV, dkv); });
    if (move) clock.transfer(step, [&] { kv = checked(t.recv(prev, TAG_KV), 2 * n_kv + doc_elems(s), prev, "K/V block"); });
    if (step + 1 == N && s.moves())  // our own block's dK/dV, home after its last hop
      clock.transfer(step, [&] { dkv = checked(t.recv(prev, TAG_DKV), 2 * n_kv, prev, "dK/dV block"); });
    clock.end(step);
  }
  const Block& mine = dkv;
  std::copy(mine->begin(), mine->begin() + n_kv, dk);
  std::copy(mine->begin() + n_kv, mine->end(), dv);
}

}  // namespace ra::ring
