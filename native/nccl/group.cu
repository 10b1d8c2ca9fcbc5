// NCCL process groups (see group.h). Host code only; compiled by nvcc for the CUDA runtime.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "group.h"

namespace ra::nccl {

namespace {

void check_cuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw UserError("Error", what + " failed: " + cudaGetErrorString(e));
}

ncclDataType_t nccl_type(DType t) {
  return t == DType::F32 ? ncclFloat32 : t == DType::BF16 ? ncclBfloat16 : ncclFloat16;
}

// A wait covers the GPU work queued before it (a ring call's last transfer follows its
// attention; a gradient sum, the backward before it), so a long sequence can outlast the timeout.
constexpr const char* kSlowHint =
    "a peer may have died, the ranks called different collectives, or the GPU work queued before it took longer "
    "than the group's timeoutMs (long sequences: raise it)";

class Group {
 public:
  Group(const ncclUniqueId& id, int rank, int world, int device, int64_t timeout_ms)
      : api_(loaded()), rank_(rank), world_(world), timeout_ms_(timeout_ms) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating the communication stream");
    if (const cudaError_t e = cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming); e != cudaSuccess) {
      cudaStreamDestroy(stream_);
      check_cuda(e, "cudaEventCreate");
    }
    // Nonblocking, so that a rank that never joins costs the others the group's timeout, not a
    // hang: the handle comes back at once and the join is polled (and aborted) like any wait.
    ncclConfig_t config{};
    config.size = offsetof(ncclConfig_t, blocking) + sizeof(int);  // no tail padding over NCCL's next field
    config.magic = kNcclConfigMagic;
    config.version = kNcclConfigVersion;
    config.blocking = 0;
    try {
      const ncclResult_t r = api_.CommInitRankConfig(&comm_, world, id, rank, &config);
      if (r != ncclSuccess && r != ncclInProgress) {
        if (comm_) abort();
        throw UserError("Error", "ncclCommInitRankConfig failed on rank " + std::to_string(rank) + ": " + api_.GetErrorString(r));
      }
      settle("joining the communicator (ncclCommInitRankConfig)");
      allocate_buffers();
    } catch (...) {
      if (comm_) abort();  // a rank that cannot allocate after joining leaves its peers to time out, as any dead rank
      free_buffers();
      cudaEventDestroy(ready_);  // no destructor runs for a constructor that throws
      cudaStreamDestroy(stream_);
      throw;
    }
  }
  ~Group() {
    try {
      if (comm_) {
        flush();
        wait("destroy (pending sends)");
      }
    } catch (...) {
      // wait() aborted the communicator; nothing more to flush
    }
    // ncclCommDestroy alone would finalize inside it, waiting for every other rank of this node
    // with no deadline (an intra-node collective); finalizing a nonblocking communicator
    // returns at once, so that wait is polled against the group's timeout like any other, and
    // a peer that never comes to it costs an abort, not a hang.
    if (comm_) {
      try {
        const ncclResult_t r = api_.CommFinalize(comm_);
        if (r != ncclSuccess && r != ncclInProgress) abort();
        else settle("destroy (finalizing the communicator; every rank of this node destroys its group)");
      } catch (...) {
        // aborted: nothing left to destroy
      }
    }
    if (comm_) api_.CommDestroy(comm_);
    for (auto& f : inflight_) cudaEventDestroy(f.done);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
    free_buffers();
  }

  // Sends are posted with the next recv (or before the next collective) inside one NCCL group,
  // so that the ring pattern send(next); recv(prev) progresses instead of each rank's send
  // blocking its stream while the peer's recv waits behind the peer's own send.
  // What is sent is a copy, taken on the default stream now: the tensor as it is at send(), as
  // a 'local' group sends it, whatever is written to it before the send is posted, and a
  // send(t, next); recv(t, prev) shifts t around the ring (NCCL's send and recv of one group
  // must not share a buffer).
  void send(const Tensor& t, int peer) {
    live();
    reap();
    const size_t bytes = size_t(t.numel()) * dtype_size(t.dtype);
    auto copy = std::make_shared<Storage>(Device::CUDA, bytes);
    check_cuda(cudaMemcpyAsync(copy->ptr, t.storage->ptr, bytes, cudaMemcpyDeviceToDevice, nullptr), "copying the sent tensor");
    pending_.push_back({std::move(copy), size_t(t.numel()), nccl_type(t.dtype), peer});
  }
  void recv(Tensor& into, int peer) {
    const ncclComm_t comm = live();
    grouped([&] { return api_.Recv(into.storage->ptr, size_t(into.numel()), nccl_type(into.dtype), peer, comm, stream_); },
            "ncclRecv");
    wait("recv from rank " + std::to_string(peer));
  }
  void all_reduce_sum(const std::vector<Tensor*>& ts) {
    post_all_reduce(ts);
    wait(ts.size() == 1 ? "allReduce" : "allReduce of " + std::to_string(ts.size()) + " tensors");
  }
  // Posts the sums and returns a ticket for wait_all_reduce(): a training step reduces each
  // layer's gradients while the next layer's backward computes. NCCL runs a communicator's
  // operations in the order they were posted, whatever their streams, so the ring's
  // transfers queue behind these sums, on every rank in the same order.
  int64_t all_reduce_sum_async(const std::vector<Tensor*>& ts) {
    // Everything that can fail before the post does: posted sums must be tracked until done.
    std::vector<std::shared_ptr<Storage>> buffers;  // kept until the sums are done, even if disposed
    for (const Tensor* t : ts) buffers.push_back(t->storage);
    inflight_.reserve(inflight_.size() + 2);  // the flush of held sends may take one
    cudaEvent_t done;
    check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    try {
      post_all_reduce(ts);
    } catch (...) {
      cudaEventDestroy(done);
      throw;
    }
    if (const cudaError_t e = cudaEventRecord(done, stream_); e != cudaSuccess) {
      cudaEventDestroy(done);
      abort();  // sums in flight that nothing could wait for: end them
      check_cuda(e, "cudaEventRecord");
    }
    inflight_.push_back({done, std::move(buffers), ++last_ticket_});
    return last_ticket_;
  }
  void wait_all_reduce(int64_t ticket) {
    if (ticket < 1 || ticket > last_ticket_) throw UserError("RangeError", "no allReduce was posted as " + std::to_string(ticket));
    if (ticket > valid_upto_) live();  // the abort ended these sums early: their results are not sums
    reap();
    if (reduced_ >= ticket) return;
    poll("allReduce", kSlowHint, [&] {
      reap();
      return reduced_ >= ticket;
    });
  }
  void barrier() {
    flush();
    check(api_.AllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, live(), stream_), "ncclAllReduce (barrier)");
    wait("barrier");
  }
  void flush() {
    if (!pending_.empty()) grouped([] { return ncclSuccess; }, "");
  }
  int rank() const { return rank_; }
  int world() const { return world_; }
  void ring_exchange(const void* send, void* recv, size_t bytes, cudaStream_t s) {
    flush();  // user sends stay ordered before ring traffic
    const int next = (rank_ + 1) % world_, prev = (rank_ + world_ - 1) % world_;
    const ncclComm_t comm = live();  // before the group opens: a throw inside would leave it open
    check(api_.GroupStart(), "ncclGroupStart");
    ncclResult_t a = api_.Send(send, bytes, ncclUint8, next, comm, s);
    ncclResult_t b = api_.Recv(recv, bytes, ncclUint8, prev, comm, s);
    check(api_.GroupEnd(), "ncclGroupEnd");
    check(a, "ncclSend");
    check(b, "ncclRecv");
  }
  void wait_stream(cudaStream_t stream, const std::string& what) { wait(what, stream); }
  void abort_now() {
    if (comm_) abort();
  }
  // Gathers every rank's `values` through one float64 allReduce (each rank fills its own row
  // of zeros) and waits for it. Waiting costs the host its lead over the GPU, so values that
  // every rank has passed before are not gathered again; ranks that made the same calls so
  // make the same collectives. A group of one compares too, so that one GPU runs this path.
  // The buffers are the group's own, made with it: nothing to allocate (or run out of) here,
  // and no kernel on another stream can still be using them.
  std::vector<std::vector<double>> disagreement(const std::vector<double>& values, const std::string& what) {
    if (agreed_.count(values)) return {};
    if (values.size() > kMaxCompared) throw UserError("Error", "internal: " + what + " has more values than the group's buffer holds");
    const size_t n = values.size(), count = n * size_t(world_), bytes = count * sizeof(double);
    flush();
    const ncclComm_t comm = live();
    std::fill(compare_host_, compare_host_ + count, 0.0);  // the last call's copy back has finished: it was waited for
    std::copy(values.begin(), values.end(), compare_host_ + n * size_t(rank_));
    check_cuda(cudaMemcpyAsync(compare_dev_, compare_host_, bytes, cudaMemcpyHostToDevice, stream_), "copying " + what);
    check(api_.AllReduce(compare_dev_, compare_dev_, count, ncclFloat64, ncclSum, comm, stream_), "ncclAllReduce");
    check_cuda(cudaMemcpyAsync(compare_host_, compare_dev_, bytes, cudaMemcpyDeviceToHost, stream_), "copying " + what);
    wait(what);
    std::vector<std::vector<double>> out;
    for (size_t r = 0; r < size_t(world_); ++r) out.emplace_back(compare_host_ + n * r, compare_host_ + n * (r + 1));
    for (const auto& row : out)
      if (row != values) return out;
    // Bounded, and cleared alike on every rank; large enough that a step's lists and ring calls
    // (a few per layer) are not compared again, each time a host wait, every step.
    if (agreed_.size() >= 4096) agreed_.clear();
    agreed_.insert(values);
    return {};
  }

 private:
  // Lists that differ across ranks would sum crosswise (same sizes in another order) or hang
  // NCCL (other sizes). Ranks compare each new list once (disagreement() remembers lists every
  // rank passed), as three numbers: the tensor count, the element count, and a 52-bit hash of
  // each tensor's size and dtype in order, exact as a double. When the list is new to every
  // rank, every rank sees every row, so all throw alike and the communicator stays in step; a
  // rank whose list is new only to itself compares while its peers sum, and that mismatch of
  // collectives ends in the timeout (or sums of other tensors), as the README says.
  void agree_on_list(const std::vector<Tensor*>& ts) {
    uint64_t hash = 1469598103934665603ull, total = 0;  // FNV-1a
    auto mix = [&](uint64_t v) {
      for (int i = 0; i < 8; ++i) hash = (hash ^ ((v >> (8 * i)) & 0xff)) * 1099511628211ull;
    };
    for (const Tensor* t : ts) {
      mix(uint64_t(t->numel())), mix(uint64_t(nccl_type(t->dtype)));
      total += uint64_t(t->numel());
    }
    const std::vector<double> mine = {double(ts.size()), double(total), double(hash & ((1ull << 52) - 1))};
    const auto rows = disagreement(mine, "comparing the ranks' allReduce tensors");
    for (size_t r = 1; r < rows.size(); ++r) {
      if (rows[r] == rows[0]) continue;
      const auto said = [&](size_t q) {
        return "rank " + std::to_string(q) + " passes " + std::to_string(uint64_t(rows[q][0])) + " tensors of " +
               std::to_string(uint64_t(rows[q][1])) + " elements in all";
      };
      const std::string what = rows[r][0] == rows[0][0] && rows[r][1] == rows[0][1]
                                   ? " (the same counts: other sizes, dtypes or order)"
                                   : "";
      throw UserError("RangeError", "allReduce: the ranks passed different tensors (" + said(0) + ", " + said(r) + what +
                                        "); every rank must make the same collective calls, with the same tensors, in "
                                        "the same order");
    }
  }
  // With plain cudaMalloc, not the cache: a cached block may still be in use by kernels on the
  // default stream, which the barrier and the comparison do not wait for. Pinned host memory,
  // so that the comparison's copies are queued on stream_ and bounded by its wait.
  void allocate_buffers() {
    check_cuda(cudaMalloc(&scratch_, sizeof(float)), "allocating the group's barrier buffer");
    const size_t bytes = kMaxCompared * size_t(world_) * sizeof(double);
    check_cuda(cudaMalloc(&compare_dev_, bytes), "allocating the group's comparison buffer");
    void* host = nullptr;
    check_cuda(cudaMallocHost(&host, bytes), "allocating the group's pinned comparison buffer");
    compare_host_ = static_cast<double*>(host);
  }
  // After an abort NCCL has stopped its kernels, and cudaFree waits for the device.
  void free_buffers() {
    if (scratch_) cudaFree(scratch_);
    if (compare_dev_) cudaFree(compare_dev_);
    if (compare_host_) cudaFreeHost(compare_host_);
    scratch_ = compare_dev_ = nullptr;
    compare_host_ = nullptr;
  }
  // Enqueues one NCCL group of in-place sums on stream_, after the default stream's work.
  void post_all_reduce(const std::vector<Tensor*>& ts) {
    agree_on_list(ts);
    flush();  // pending sends go first, in a group of their own
    after_default_stream();
    const ncclComm_t comm = live();  // before the group opens: a throw inside would leave it open
    check(api_.GroupStart(), "ncclGroupStart");
    ncclResult_t first_error = ncclSuccess;
    for (Tensor* t : ts) {
      const ncclResult_t r = api_.AllReduce(t->storage->ptr, t->storage->ptr, size_t(t->numel()), nccl_type(t->dtype),
                                            ncclSum, comm, stream_);
      if (first_error == ncclSuccess && r != ncclSuccess && r != ncclInProgress) first_error = r;
    }
    check(api_.GroupEnd(), "ncclGroupEnd");
    check(first_error, "ncclAllReduce");
  }
  // Every op and kernel runs on the default stream, and stream_ does not wait for it
  // (non-blocking): before NCCL touches a tensor, stream_ waits for the work queued so far,
  // e.g. the backward that writes the gradients an allReduce sums.
  void after_default_stream() {
    check_cuda(cudaEventRecord(ready_, nullptr), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready_, 0), "cudaStreamWaitEvent");
  }
  ncclComm_t live() {
    if (!comm_) throw UserError("Error", "this NCCL group was aborted after an earlier error or timeout");
    return comm_;
  }
  // A nonblocking communicator may answer ncclInProgress while it enqueues; the next call (and
  // any event we record after the work) must wait until it has finished doing so. Any other
  // answer aborts the communicator first: NCCL work queued earlier may be waiting for a peer
  // that is gone, and whoever drains our streams after this error must not wait on it forever.
  void check(ncclResult_t r, const char* what) {
    if (r == ncclInProgress) settle(what);
    else if (r != ncclSuccess) {
      const std::string why = api_.GetErrorString(r);
      if (comm_) abort();
      throw UserError("Error", std::string(what) + " failed on rank " + std::to_string(rank_) + ": " + why);
    }
  }
  // Polls until the communicator has no call in progress; an error or the deadline aborts it.
  void settle(const std::string& what) {
    poll(what, "a rank may have died or never joined", [&] {
      ncclResult_t state = ncclInProgress;
      api_.CommGetAsyncError(comm_, &state);
      return state == ncclSuccess;  // an error is raised by poll()
    });
  }
  // Posts the pending sends and the call `more` makes (named `more_what`) as one NCCL group;
  // each sent copy's memory is kept until the stream passes the group. Errors are checked
  // after ncclGroupEnd: an abort inside an open group would leave NCCL's group state half done.
  template <typename F>
  void grouped(F&& more, const char* more_what) {
    after_default_stream();
    const ncclComm_t comm = live();  // before the group opens: a throw inside would leave it open
    cudaEvent_t done = nullptr;      // one point in the stream after which every sent copy is free
    if (!pending_.empty()) check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    if (const ncclResult_t r = api_.GroupStart(); r != ncclSuccess) {
      if (done) cudaEventDestroy(done);
      check(r, "ncclGroupStart");
    }
    ncclResult_t first_error = ncclSuccess;
    const char* failed = "ncclSend";
    auto note = [&](ncclResult_t r, const char* what) {
      if (first_error == ncclSuccess && r != ncclSuccess && r != ncclInProgress) first_error = r, failed = what;
    };
    for (const auto& p : pending_) note(api_.Send(p.storage->ptr, p.count, p.type, p.peer, comm, stream_), "ncclSend");
    note(more(), more_what);
    // The sends are posted: whatever fails below, they must not be posted again, and their
    // copies stay until the stream passes them (after an abort, until the group is destroyed).
    std::vector<std::shared_ptr<Storage>> buffers;
    for (auto& p : pending_) buffers.push_back(std::move(p.storage));
    pending_.clear();
    try {
      check(api_.GroupEnd(), "ncclGroupEnd");  // settles first: the event must follow the enqueue
      check(first_error, failed);
      if (done) {
        check_cuda(cudaEventRecord(done, stream_), "cudaEventRecord");
        inflight_.push_back({done, std::move(buffers), 0});
      }
    } catch (...) {
      if (done) cudaEventDestroy(done);
      if (comm_) abort();  // copies that nothing can wait for: end their sends
      for (auto& b : buffers) aborted_copies_.push_back(std::move(b));
      throw;
    }
  }
  void abort() {
    try {
      reap();
    } catch (...) {
    }
    if (comm_) valid_upto_ = reduced_;  // sums done before the abort are sums; those it ends are not
    if (comm_) api_.CommAbort(comm_);
    comm_ = nullptr;
  }
  // Polls until the stream is idle; an NCCL error or the deadline aborts the communicator.
  void wait(const std::string& what, cudaStream_t stream = nullptr) {
    poll(what, kSlowHint, [&] {
      const cudaError_t e = cudaStreamQuery(stream ? stream : stream_);
      if (e != cudaSuccess && e != cudaErrorNotReady) check_cuda(e, what);
      return e == cudaSuccess;
    });
    reap();
  }
  // Calls done() until it says yes; between calls, an NCCL error or the group's deadline aborts
  // the communicator and throws (`hint`: the likely cause of a timeout).
  template <typename Done>
  void poll(const std::string& what, const char* hint, Done&& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    while (!done()) {
      ncclResult_t async = ncclSuccess;
      if (comm_) api_.CommGetAsyncError(comm_, &async);  // none once aborted: only the stream is polled
      if (async != ncclSuccess && async != ncclInProgress) {
        std::string why = api_.GetErrorString(async);
        abort();
        throw UserError("Error", "NCCL " + what + " failed on rank " + std::to_string(rank_) + ": " + why);
      }
      if (std::chrono::steady_clock::now() > deadline) {
        abort();
        throw UserError("Error", "NCCL " + what + " on rank " + std::to_string(rank_) + " did not finish within " +
                                     std::to_string(timeout_ms_) + " ms; the communicator was aborted (" + hint + ")");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  void reap() {  // frees the buffers of sends and sums that have completed
    for (auto it = inflight_.begin(); it != inflight_.end();) {
      const cudaError_t e = cudaEventQuery(it->done);
      if (e == cudaErrorNotReady) break;  // in stream order: later ones are not done either
      check_cuda(e, "waiting for NCCL work");  // a CUDA error, not a slow peer: said at once
      cudaEventDestroy(it->done);
      if (it->ticket) reduced_ = it->ticket;
      it = inflight_.erase(it);
    }
  }

  const Api& api_;
  int rank_, world_;
  int64_t timeout_ms_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;  // recorded on the default stream, waited for by stream_
  void* scratch_ = nullptr;                 // the barrier's one float
  static constexpr size_t kMaxCompared = 32;  // values per rank disagreement() can compare
  void* compare_dev_ = nullptr;             // kMaxCompared doubles per rank
  double* compare_host_ = nullptr;          // the same, pinned
  struct PendingSend {
    std::shared_ptr<Storage> storage;
    size_t count;
    ncclDataType_t type;
    int peer;
  };
  std::vector<PendingSend> pending_;
  std::vector<std::shared_ptr<Storage>> aborted_copies_;  // sent copies of a group that failed
  // Work on stream_ whose buffers must outlive it: held sends (ticket 0), asynchronous sums.
  struct Inflight {
    cudaEvent_t done;
    std::vector<std::shared_ptr<Storage>> buffers;
    int64_t ticket;
  };
  std::vector<Inflight> inflight_;
  int64_t last_ticket_ = 0, reduced_ = 0;  // asynchronous sums posted, and known to be done
  int64_t valid_upto_ = INT64_MAX;          // after an abort: the last sum done before it
  std::set<std::vector<double>> agreed_;    // values every rank passed to disagreement()
};

std::mutex registry_mu;
// Never destroyed: a group left live at exit would otherwise be destroyed by a static
// destructor, waiting for its peers (up to the timeout) after the CUDA runtime may be gone;
// the process's end closes its connections, and its peers' waits fail or time out.
std::map<int64_t, std::unique_ptr<Group>>& registry = *new std::map<int64_t, std::unique_ptr<Group>>;
int64_t next_id = 1;

Group& find(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = registry.find(id);
  if (it == registry.end()) throw UserError("Error", "this NCCL group has been destroyed");
  return *it->second;
}

}  // namespace

int64_t create_group(const ncclUniqueId& id, int rank, int world_size, int device, int64_t timeout_ms) {
  auto g = std::make_unique<Group>(id, rank, world_size, device, timeout_ms);
  std::lock_guard<std::mutex> lock(registry_mu);
  registry[next_id] = std::move(g);
  return next_id++;
}

void destroy_group(int64_t id) {
  std::unique_ptr<Group> g;
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = registry.find(id);
    if (it == registry.end()) return;
    g = std::move(it->second);
    registry.erase(it);
  }
}

void send(int64_t g, const Tensor& t, int peer) { find(g).send(t, peer); }
void recv(int64_t g, Tensor& into, int peer) { find(g).recv(into, peer); }
void all_reduce_sum(int64_t g, const std::vector<Tensor*>& ts) { find(g).all_reduce_sum(ts); }
int64_t all_reduce_sum_async(int64_t g, const std::vector<Tensor*>& ts) { return find(g).all_reduce_sum_async(ts); }
void wait_all_reduce(int64_t g, int64_t ticket) { find(g).wait_all_reduce(ticket); }
void barrier(int64_t g) { find(g).barrier(); }
int group_rank(int64_t g) { return find(g).rank(); }
int group_world_size(int64_t g) { return find(g).world(); }
void ring_exchange(int64_t g, const void* send, void* recv, size_t bytes, void* stream) {
  find(g).ring_exchange(send, recv, bytes, static_cast<cudaStream_t>(stream));
}
void wait_stream(int64_t g, void* stream, const std::string& what) {
  find(g).wait_stream(static_cast<cudaStream_t>(stream), what);
}
void abort_group(int64_t g) noexcept {
  try {
    find(g).abort_now();
  } catch (...) {
    // destroyed already: nothing left to abort
  }
}
std::vector<std::vector<double>> disagreement(int64_t g, const std::vector<double>& values, const std::string& what) {
  return find(g).disagreement(values, what);
}

}  // namespace ra::nccl
