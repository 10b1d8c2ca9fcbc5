// Runs native/nccl/group.cu, unmodified, against a fake NCCL (the Api table below, which
// logs every call) and a fake CUDA runtime (cuda_runtime.h beside this): no GPU and no NCCL
// needed. Checks what the GPU tests cannot show on one GPU: the ring exchange is one NCCL
// group (send to rank + 1, recv from rank - 1), sends and sums wait for the default stream,
// a list of sums is one group, sums posted without waiting hold their memory until done,
// ranks compare their ring arguments and allReduce lists once per new set (and name what differs),
// and a wait that never ends, an NCCL error or a rank that never joins abort the
// communicator and throw, within the group's timeout, instead of hanging.
// Built and run by test/nccl-fake.test.ts:
//   g++ -std=c++20 -O1 -fsanitize=address -Itest/nccl-fake -I. test/nccl-fake/test.cpp -o t && ./t
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "native/nccl/group.cu"
#include "native/ring/signature.h"

namespace ra {
Storage::Storage(Device d, size_t n) : device(d), bytes(n), ptr(std::malloc(n ? n : 1)) {}
Storage::~Storage() { std::free(ptr); }
Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device) {
  Tensor t;
  t.shape = std::move(shape), t.dtype = dtype, t.device = device;
  t.storage = std::make_shared<Storage>(device, size_t(t.numel()) * dtype_size(dtype));
  return t;
}
}  // namespace ra

using namespace ra::nccl;

namespace fake {
ncclResult_t init_result = ncclSuccess;   // what ncclCommInitRankConfig answers
ncclResult_t async_state = ncclSuccess;   // what ncclCommGetAsyncError reports
ncclResult_t send_result = ncclSuccess;   // what ncclSend answers
ncclResult_t reduce_result = ncclSuccess; // what ncclAllReduce answers
ncclResult_t recv_result = ncclSuccess;   // what ncclRecv answers
float first_sent = 0;                     // the first float of the last float32 send's buffer, read when posted
int aborts = 0, destroys = 0, comm_storage = 0, world = 1;
// A float64 allReduce is disagreement()'s gather: every other rank's row is a copy of this
// rank's (the one row not all zeros), then edit(rows, row length) changes them if set.
std::function<void(double*, size_t)> edit;
void gather(double* rows, size_t n) {
  const size_t len = n / size_t(world);
  size_t own = 0;
  while (own + 1 < size_t(world) && std::all_of(rows + own * len, rows + (own + 1) * len, [](double v) { return v == 0; })) ++own;
  for (size_t r = 0; r < size_t(world); ++r)
    if (r != own) std::copy(rows + own * len, rows + (own + 1) * len, rows + r * len);
  if (edit) edit(rows, len);
}
ncclComm_t comm() { return reinterpret_cast<ncclComm_t>(&comm_storage); }
void log(const std::string& s) { fake_log.push_back(s); }
std::string stream(cudaStream_t s) { return fake_name(s); }
const Api api = {
    [](int* v) { *v = 22300; return ncclSuccess; },
    [](ncclUniqueId*) { return ncclSuccess; },
    [](ncclComm_t*, int, ncclUniqueId, int) { return ncclSuccess; },
    [](ncclComm_t* c, int n, ncclUniqueId, int rank, ncclConfig_t* cfg) {
      *c = comm();
      world = n;
      log("init rank " + std::to_string(rank) + " of " + std::to_string(n) + (cfg->blocking ? " blocking" : " nonblocking"));
      return init_result;
    },
    [](ncclComm_t) { ++destroys; log("destroy"); return ncclSuccess; },
    [](ncclComm_t) { ++aborts; log("abort"); return ncclSuccess; },
    [](ncclComm_t, ncclResult_t* e) { *e = async_state; return ncclSuccess; },
    [](ncclResult_t r) { return r == ncclRemoteError ? "remote process exited or there was a network error" : "fake"; },
    [](const void* buf, size_t n, ncclDataType_t t, int peer, ncclComm_t, cudaStream_t s) {
      if (t == ncclFloat32 && n > 0) first_sent = *static_cast<const float*>(buf);
      log("send " + std::to_string(n) + " type " + std::to_string(t) + " to " + std::to_string(peer) + " on " + stream(s));
      return send_result;
    },
    [](void*, size_t n, ncclDataType_t t, int peer, ncclComm_t, cudaStream_t s) {
      log("recv " + std::to_string(n) + " type " + std::to_string(t) + " from " + std::to_string(peer) + " on " + stream(s));
      return recv_result;
    },
    [](const void*, void* recv, size_t n, ncclDataType_t t, ncclRedOp_t, ncclComm_t, cudaStream_t s) {
      log("allReduce " + std::to_string(n) + " on " + stream(s));
      if (t == ncclFloat64 && reduce_result == ncclSuccess) gather(static_cast<double*>(recv), n);
      return reduce_result;
    },
    [] { log("groupStart"); return ncclSuccess; },
    [] { log("groupEnd"); return ncclSuccess; },
    [](ncclComm_t) { log("finalize"); return ncclInProgress; },  // nonblocking: settled through async_state
};
}  // namespace fake

namespace ra::nccl {
const Api& loaded() { return fake::api; }
}

static int failures = 0;
static void expect(bool ok, const std::string& what) {
  if (!ok) ++failures;
  printf("  %s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}
static std::string joined() {
  std::string s;
  for (const auto& l : fake_log) s += (s.empty() ? "" : " | ") + l;
  return s;
}
// The message of what f throws ("" if nothing) and how long it took.
template <class F>
static std::pair<std::string, double> thrown(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg;
  try {
    f();
  } catch (const std::exception& e) {
    msg = e.what();
  }
  return {msg, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()};
}
static bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
static void reset() {
  fake_log.clear();
  fake_stream_idle = true;
  fake_pending_events.clear(), fake_records_done_at_once = 0, fake_event_error = cudaSuccess, fake_record_error = cudaSuccess;
  fake::init_result = ncclSuccess, fake::async_state = ncclSuccess, fake::send_result = ncclSuccess, fake::reduce_result = ncclSuccess, fake::aborts = 0;
  fake::recv_result = ncclSuccess;
  fake::edit = nullptr;
}

// Sums a list once with the streams idle, so that the ranks' comparison of it (made once per new
// list, and waited for) is behind; the test that follows sees only the sums.
static void agreed(int64_t g, const std::vector<ra::Tensor*>& list) {
  const bool idle = fake_stream_idle;
  fake_stream_idle = true;
  all_reduce_sum(g, list);
  fake_stream_idle = idle;
  fake_log.clear();
}

int main() {
  const ncclUniqueId id{};
  reset();
  int64_t g = create_group(id, 1, 4, 0, 200);
  expect(has(joined(), "init rank 1 of 4 nonblocking"), "the communicator is nonblocking (a missing rank costs a timeout, not a hang): " + joined());

  // The ring exchange: one group, send to rank 2, recv from rank 0, on the caller's stream.
  fake_log.clear();
  CUstream_st ring_stream{99};
  char a[64], b[64];
  ring_exchange(g, a, b, 64, &ring_stream);
  expect(joined() == "groupStart | send 64 type 1 to 2 on stream99 | recv 64 type 1 from 0 on stream99 | groupEnd",
         "ring exchange is one group, send(next) then recv(prev): " + joined());

  // A user send is held and posted with the next recv in one group, after the default stream.
  fake_log.clear();
  ra::Tensor t = ra::Tensor::empty({8}, ra::DType::F32, ra::Device::CUDA), r = ra::Tensor::empty({8}, ra::DType::BF16, ra::Device::CUDA);
  std::fill(t.f32(), t.f32() + 8, 1.f);
  send(g, t, 3);
  expect(joined() == "copy 32 bytes on default", "send alone posts nothing yet, and copies the tensor on the default stream: " + joined());
  std::fill(t.f32(), t.f32() + 8, 2.f);  // written after send(): not what is sent
  recv(g, r, 3);
  const std::string l = joined();
  expect(fake::first_sent == 1.f, "what is sent is the tensor as it was at send(): " + std::to_string(fake::first_sent));
  expect(has(l, "record event") && has(l, "on default") && l.find("waits event") < l.find("groupStart") &&
             l.find("groupStart") < l.find("send 8 type 7 to 3") && l.find("send 8 type 7 to 3") < l.find("recv 8 type 9 from 3") &&
             l.find("recv 8 type 9 from 3") < l.find("groupEnd"),
         "send + recv: the stream waits for the default stream, then one group: " + l);

  // allReduce: after the default stream (the gradients it sums are written there).
  fake_log.clear();
  all_reduce_sum(g, {&t});
  const std::string ar = joined();
  expect(ar.find("on default") < ar.find("waits event") && ar.find("waits event") < ar.find("allReduce 8"),
         "allReduce waits for the default stream first: " + ar);
  // A list of tensors (a step's gradients): one NCCL group of allReduces, with a held send
  // posted first in a group of its own.
  ra::Tensor big = ra::Tensor::empty({3, 5}, ra::DType::BF16, ra::Device::CUDA);
  send(g, t, 2);
  fake_log.clear();
  all_reduce_sum(g, {&t, &big, &r});
  const std::string many = joined();
  const size_t sent_at = many.find("send 8 type 7 to 2"), last_start = many.rfind("groupStart");
  expect(sent_at != std::string::npos && sent_at < last_start &&
             many.substr(last_start) == "groupStart | allReduce 8 on stream1 | allReduce 15 on stream1 | allReduce 8 on stream1 | groupEnd",
         "allReduce of 3 tensors: the held send, then one group of three allReduces: " + many);

  // A wait that never ends: aborted after the timeout, with an error naming it; later calls refuse.
  fake_stream_idle = false;
  auto [msg, ms] = thrown([&] { wait_stream(g, &ring_stream, "ring attention transfers"); });
  expect(has(msg, "ring attention transfers on rank 1 did not finish within 200 ms") && has(msg, "aborted") && has(msg, "raise it"),
         "timeout message: " + msg);
  expect(ms >= 200 && ms < 5000, "the timeout took " + std::to_string(ms) + " ms (200 asked)");
  expect(fake::aborts == 1, "the communicator was aborted once");
  // Draining a stream after the abort (the ring's error path) polls the stream alone, bounded.
  auto [drain, drain_ms] = thrown([&] { wait_stream(g, &ring_stream, "drain"); });
  expect(has(drain, "did not finish within 200 ms") && fake::aborts == 1 && drain_ms < 5000,
         "a wait after the abort is bounded and aborts nothing more: " + drain);
  fake_stream_idle = true;
  auto [again, _] = thrown([&] { all_reduce_sum(g, {&t}); });
  expect(has(again, "aborted after an earlier error or timeout"), "a call after the abort: " + again);
  destroy_group(g);

  // An asynchronous NCCL error (a peer died): aborted at once, the error named.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  fake_stream_idle = false;
  fake::async_state = ncclRemoteError;
  auto [err, err_ms] = thrown([&] { barrier(g); });
  expect(has(err, "NCCL barrier failed on rank 0: remote process exited") && err_ms < 2000, "async error: " + err);
  expect(fake::aborts == 1, "aborted on the async error");
  destroy_group(g);

  // A send that fails outright: the communicator is aborted before the error is thrown (work
  // queued earlier may wait on a dead peer; draining the streams afterwards must not hang),
  // and a later exchange is refused before it opens an NCCL group it could not close.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  fake::send_result = ncclRemoteError;
  const std::string sent = thrown([&] { ring_exchange(g, a, b, 64, &ring_stream); }).first;
  expect(has(sent, "ncclSend failed on rank 0: remote process exited") && fake::aborts == 1, "failed send aborts first: " + sent);
  fake_log.clear();
  const std::string after = thrown([&] { ring_exchange(g, a, b, 64, &ring_stream); }).first;
  expect(has(after, "aborted after an earlier error") && fake_log.empty(), "exchange after the abort opens no group: " + joined());
  destroy_group(g);

  // A recv that fails (NCCL answers a peer's death there too): the group is closed before the
  // communicator is aborted, and the error names the recv.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  fake::recv_result = ncclRemoteError;
  send(g, t, 1);
  fake_log.clear();
  const std::string recv_err = thrown([&] { recv(g, r, 1); }).first;
  const std::string recv_log = joined();
  expect(has(recv_err, "ncclRecv failed on rank 0: remote process exited") && fake::aborts == 1 &&
             recv_log.find("groupEnd") < recv_log.find("abort"),
         "failed recv: group closed, then aborted: " + recv_err + " / " + recv_log);
  destroy_group(g);

  // The sends' event cannot be recorded after their group was posted: aborted, and the sends
  // are not posted again by a later call or the destroy.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  const int events_before = fake_live_events;
  send(g, t, 1);
  fake_record_error = cudaErrorIllegalAddress;
  const std::string rec_err = thrown([&] { recv(g, r, 1); }).first;
  fake_record_error = cudaSuccess;
  destroy_group(g);
  size_t posted = 0;
  for (const auto& line : fake_log) posted += line.rfind("send 8 type 7 to 1", 0) == 0;
  expect(has(rec_err, "cudaEventRecord failed") && fake::aborts == 1 && posted == 1 && fake_live_events < events_before,
         "a failed record after the group: aborted, the send posted once, its event freed: " + rec_err + " / " + joined());

  // An allReduce that fails outright inside a list: the group is closed, the communicator
  // aborted, the error named.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  agreed(g, {&t, &big});
  fake::reduce_result = ncclInvalidArgument;
  const std::string reduced = thrown([&] { all_reduce_sum(g, {&t, &big}); }).first;
  const std::string reduce_log = joined();
  expect(has(reduced, "ncclAllReduce failed on rank 0") && fake::aborts == 1 &&
             reduce_log.rfind("groupEnd") > reduce_log.rfind("allReduce 15") && reduce_log.rfind("abort") > reduce_log.rfind("groupEnd"),
         "a failed allReduce closes its group, then aborts: " + reduced + " / " + reduce_log);
  destroy_group(g);

  // allReduce without waiting (a layer's gradients under the next layer's backward): one
  // group, an event after it, no polling; the tensors' memory is held until the sums are done.
  reset();
  g = create_group(id, 0, 2, 0, 300);
  int64_t ticket = 0;
  {
    ra::Tensor held = ra::Tensor::empty({4}, ra::DType::F32, ra::Device::CUDA);
    agreed(g, {&held, &big});
    fake_stream_idle = false;
    ticket = all_reduce_sum_async(g, {&held, &big});
    const std::string posted = joined();
    const std::string after = posted.substr(posted.find("groupEnd"));
    expect(ticket == 1 && posted.substr(posted.find("groupStart")).rfind("groupStart | allReduce 4 on stream", 0) == 0 &&
               has(posted, "allReduce 15") && has(after, "record event") && !has(after, "on default") && has(after, " on stream"),
           "async allReduce: one group, then an event on the group's stream, no wait: " + posted);
    expect(held.storage.use_count() == 2, "the posted tensor's memory is held by the group");
  }
  ring_exchange(g, a, b, 64, &ring_stream);  // other traffic can be posted meanwhile
  auto [slow, slow_ms] = thrown([&] { wait_all_reduce(g, ticket); });
  expect(has(slow, "NCCL allReduce on rank 0 did not finish within 300 ms") && fake::aborts == 1 && slow_ms < 5000,
         "waiting on sums that never finish: bounded, aborted: " + slow);
  destroy_group(g);

  reset();
  g = create_group(id, 0, 2, 0, 10000);
  ra::Tensor kept = ra::Tensor::empty({4}, ra::DType::F32, ra::Device::CUDA);
  agreed(g, {&kept});
  agreed(g, {&big});
  fake_stream_idle = false;
  const int64_t t1 = all_reduce_sum_async(g, {&kept}), t2 = all_reduce_sum_async(g, {&big});
  fake_stream_idle = true;
  wait_all_reduce(g, t2);
  wait_all_reduce(g, t1);  // done already: returns at once
  expect(t1 == 1 && t2 == 2 && kept.storage.use_count() == 1, "waits return once done, and the memory is let go");
  const std::string unknown = thrown([&] { wait_all_reduce(g, 3); }).first;
  expect(has(unknown, "no allReduce was posted as 3"), "an unknown ticket is refused, not waited for: " + unknown);
  // Sums ended by an abort (here: a peer's error seen in a later barrier) are not sums.
  fake_stream_idle = false;
  const int64_t t3 = all_reduce_sum_async(g, {&kept});
  fake::async_state = ncclRemoteError;
  thrown([&] { barrier(g); });
  fake_stream_idle = true;
  const std::string ended = thrown([&] { wait_all_reduce(g, t3); }).first;
  expect(has(ended, "aborted after an earlier error"), "waiting on sums that an abort ended throws: " + ended);
  destroy_group(g);
  // ... while sums done before the abort are sums.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  const int64_t early = all_reduce_sum_async(g, {&kept});
  fake_stream_idle = false;
  fake::async_state = ncclRemoteError;
  thrown([&] { barrier(g); });
  const std::string done_before = thrown([&] { wait_all_reduce(g, early); }).first;
  expect(done_before.empty() && fake::aborts == 1, "sums done before an abort can still be waited for: " + done_before);
  destroy_group(g);

  // Done means this sum's own event: a held send that completed first (posted just before the
  // sums, in the same call) does not make the sums done.
  reset();
  g = create_group(id, 0, 2, 0, 200);
  agreed(g, {&kept});
  fake_stream_idle = false;
  send(g, t, 1);
  fake_records_done_at_once = 1;  // the send's event
  const int64_t after_send = all_reduce_sum_async(g, {&kept});
  const std::string still = thrown([&] { wait_all_reduce(g, after_send); }).first;
  expect(has(still, "did not finish within 200 ms"), "a finished send before unfinished sums: still waiting: " + still);
  destroy_group(g);

  // A CUDA error while waiting is said at once, as itself, not as a timeout after the deadline.
  reset();
  g = create_group(id, 0, 2, 0, 10000);
  agreed(g, {&kept});
  fake_stream_idle = false;
  const int64_t broken = all_reduce_sum_async(g, {&kept});
  fake_event_error = cudaErrorIllegalAddress;
  auto [cuda_err, cuda_ms] = thrown([&] { wait_all_reduce(g, broken); });
  expect(has(cuda_err, "waiting for NCCL work failed: fake CUDA error") && cuda_ms < 2000,
         "a CUDA error in a wait: " + cuda_err + " after " + std::to_string(cuda_ms) + " ms");
  fake_event_error = cudaSuccess;
  destroy_group(g);

  // A rank that never joins: init stays in progress; the constructor gives up at the timeout
  // and frees its stream and event.
  reset();
  const int streams = fake_live_streams, events = fake_live_events, buffers = fake_live_buffers;
  fake::init_result = ncclInProgress;
  fake::async_state = ncclInProgress;
  auto [join, join_ms] = thrown([&] { create_group(id, 2, 3, 0, 100); });
  expect(has(join, "joining the communicator (ncclCommInitRankConfig) on rank 2 did not finish within 100 ms") &&
             has(join, "never joined"), "never joined: " + join);
  expect(join_ms >= 100 && fake::aborts == 1, "gave up after " + std::to_string(join_ms) + " ms and aborted");
  expect(fake_live_streams == streams && fake_live_events == events && fake_live_buffers == buffers,
         "no stream, event or buffer left behind");

  // A rank that joins but cannot allocate the group's buffers: it aborts its communicator (its
  // peers meet their timeout, as with any dead rank) and frees what it made.
  reset();
  fake_pinned_refused = true;
  auto [oom, oom_ms] = thrown([&] { create_group(id, 0, 2, 0, 100); });
  fake_pinned_refused = false;
  expect(has(oom, "allocating the group's pinned comparison buffer failed") && fake::aborts == 1 &&
             fake_live_streams == streams && fake_live_events == events && fake_live_buffers == buffers,
         "no memory after joining: aborted, nothing left behind: " + oom);

  // Ranks compare their ring arguments before the first transfer (a size mismatch would hang
  // NCCL): one float64 allReduce of a row per rank, waited for, and only for values not agreed before.
  reset();
  g = create_group(id, 1, 3, 0, 200);
  fake_log.clear();
  const std::vector<double> mine = {1, 4096, 0.125};
  expect(disagreement(g, mine, "comparing").empty(), "ranks that agree: no rows back");
  const std::string gathered = joined();
  const size_t up = gathered.find("copy 72 bytes on stream"), sum = gathered.find("allReduce 9 on stream"),
               down = gathered.rfind("copy 72 bytes on stream");
  expect(gathered.find("default") == std::string::npos && up < sum && sum < down && down != std::string::npos,
         "one allReduce of 3 ranks x 3 values through the group's stream, in the group's own buffers (no wait for "
         "the default stream): " + gathered);
  fake_log.clear();
  expect(disagreement(g, mine, "comparing").empty() && fake_log.empty(), "values agreed before: no traffic, no wait: " + joined());
  fake::edit = [](double* rows, size_t len) { rows[2 * len + 1] = 4000; };
  const std::vector<double> other = {1, 2048, 0.125};
  const auto rows = disagreement(g, other, "comparing");
  expect(rows.size() == 3 && rows[1] == other && rows[2][1] == 4000 && fake::aborts == 0,
         "a rank that differs: every row back, the communicator not aborted");
  fake_log.clear();
  expect(disagreement(g, other, "comparing").size() == 3 && has(joined(), "allReduce 9"), "values that differed are compared again");
  auto [too_many, too_many_ms] = thrown([&] { disagreement(g, std::vector<double>(33, 1.0), "comparing"); });
  expect(has(too_many, "more values than the group's buffer holds") && fake::aborts == 0, "too many values refused: " + too_many);
  // What the ring says of a mismatch (cuda/ring_cuda.cu): the fields that differ, by name.
  ra::ring::RingShape shape{1, 4096, 32, 8, 128, 0.088f, true, true};
  auto r0 = ra::ring::call_signature(shape, ra::DType::BF16, ra::Device::CUDA, false);
  shape.seq = 4000, shape.causal = false;
  auto r2 = ra::ring::call_signature(shape, ra::DType::BF16, ra::Device::CUDA, false);
  const std::string why = ra::ring::signature_mismatch({r0, r0, r2});
  expect(why == "rank 0 and rank 2 differ: shard length 4096 vs 4000, causal true vs false", "mismatch named: " + why);
  expect(ra::ring::signature_mismatch({r0, r0}).empty(), "no mismatch: nothing said");
  r2 = ra::ring::call_signature(shape, ra::DType::F16, ra::Device::CPU, true);
  r2[10] = 0.5;  // the scale
  const std::string kinds = ra::ring::signature_mismatch({r0, r2});
  expect(has(kinds, "pass forward vs backward, dtype bfloat16 vs float16") && has(kinds, "scale 0.088 vs 0.5, device cuda vs cpu"), "mismatch named: " + kinds);
  // A peer that never comes to the allReduce: bounded by the timeout, aborted.
  fake::edit = [](double*, size_t) { fake_stream_idle = false; };
  fake_log.clear();
  auto [stuck, stuck_ms] = thrown([&] { disagreement(g, {7}, "comparing the ranks' ring arguments"); });
  expect(has(joined(), "allReduce 3") && has(stuck, "comparing the ranks' ring arguments on rank 1 did not finish within 200 ms") &&
             fake::aborts == 1 && stuck_ms < 5000,
         "a comparison that never finishes: " + stuck);
  destroy_group(g);

  // allReduce lists are compared the same way, once per new list: tensor count, element count
  // and a hash of the sizes and dtypes in order. A mismatch throws on every rank before any sum
  // is posted (the sums would mix other tensors, or hang), and leaves the communicator in step.
  reset();
  g = create_group(id, 1, 3, 0, 200);
  fake_log.clear();
  all_reduce_sum(g, {&t, &big});
  const std::string first_list = joined();
  expect(has(first_list, "allReduce 9 on stream") && first_list.find("allReduce 9") < first_list.find("allReduce 8") &&
             has(first_list, "allReduce 15"),
         "a new list: compared (3 values x 3 ranks), then summed: " + first_list);
  fake_log.clear();
  all_reduce_sum(g, {&t, &big});
  expect(!has(joined(), "allReduce 9") && has(joined(), "allReduce 8"), "the same list again: summed only: " + joined());
  fake_log.clear();
  all_reduce_sum(g, {&big, &t});
  expect(has(joined(), "allReduce 9"), "the same tensors in another order are a new list: compared: " + joined());
  const std::string rule = "; every rank must make the same collective calls, with the same tensors, in the same order";
  fake::edit = [](double* rows, size_t len) { rows[2 * len] = 3, rows[2 * len + 1] = 30; };
  fake_log.clear();
  const std::string counts = thrown([&] { all_reduce_sum_async(g, {&r, &big}); }).first;
  expect(counts == "allReduce: the ranks passed different tensors (rank 0 passes 2 tensors of 23 elements in all, "
                   "rank 2 passes 3 tensors of 30 elements in all)" + rule &&
             !has(joined(), "allReduce 8") && fake::aborts == 0,
         "a rank with another list: named, nothing summed, not aborted: " + counts + " / " + joined());
  fake::edit = [](double* rows, size_t len) { rows[len + 2] += 1; };
  const std::string order = thrown([&] { all_reduce_sum(g, {&t, &r}); }).first;
  expect(has(order, "rank 0 passes 2 tensors of 16 elements in all, rank 1 passes 2 tensors of 16 elements in all "
                    "(the same counts: other sizes, dtypes or order)"),
         "the same counts in another order or dtype: said so: " + order);
  fake::edit = nullptr;
  destroy_group(g);

  // A ring call that failed part-way aborts its group (ring_cuda.cu): once, and later calls refuse.
  reset();
  g = create_group(id, 0, 2, 0, 1000);
  abort_group(g);
  abort_group(g);
  fake_log.clear();
  const std::string refused = thrown([&] { ring_exchange(g, a, b, 64, &ring_stream); }).first;
  expect(fake::aborts == 1 && has(refused, "aborted after an earlier error") && fake_log.empty(),
         "abort_group aborts once; the next exchange opens no group: " + refused + " / " + joined());
  destroy_group(g);
  abort_group(g);  // destroyed: nothing to abort, no throw

  // Destroying a healthy group waits for its sends and destroys the communicator.
  reset();
  g = create_group(id, 0, 2, 0, 1000);
  const int destroyed = fake::destroys;
  destroy_group(g);
  expect(fake::destroys == destroyed + 1 && fake_live_streams == streams && fake_live_events == events &&
             fake_live_buffers == buffers,
         "destroy: communicator destroyed, stream, events and buffers freed");

  // Destroying finalizes first, polled against the timeout (ncclCommDestroy alone would wait
  // for the node's other ranks without a deadline): a finalize that never completes aborts.
  reset();
  g = create_group(id, 0, 2, 0, 200);
  fake_log.clear();
  destroy_group(g);
  const std::string fin = joined();
  expect(has(fin, "finalize") && fin.find("finalize") < fin.find("destroy") && fake::destroys == destroyed + 2 && fake::aborts == 0,
         "destroy finalizes, then destroys: " + fin);
  reset();
  g = create_group(id, 0, 2, 0, 200);
  fake::async_state = ncclInProgress;  // the finalize's barrier: a peer never comes
  const int before_stuck = fake::destroys;
  const double finalize_ms = thrown([&] { destroy_group(g); }).second;
  expect(fake::aborts == 1 && fake::destroys == before_stuck && finalize_ms >= 200 && finalize_ms < 5000 && fake_live_streams == streams,
         "a finalize that never completes: aborted after the timeout (" + std::to_string(finalize_ms) + " ms), not destroyed");

  printf("%d failures\n", failures);
  return failures != 0;
}
