// Point-to-point and collective traffic between the ranks of a group, behind one small
// interface so the ring loop does not know whether its peers are threads (LocalGroup,
// here) or other processes (NCCL). Blocks are float32 host buffers handed over by pointer:
// a sender must not write a block after sending it. Ranks on CUDA exchange other messages
// (device buffers with events, see cuda/ring_cuda.cu) through the same mailboxes.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../common.h"

namespace ra::ring {

using Block = std::shared_ptr<std::vector<float>>;

enum Tag : int {
  TAG_USER = 0, TAG_KV = 1, TAG_DKV = 2,
  // CUDA ranks: a device block offered to the next rank, and the receipt that it was copied.
  TAG_DEV_KV = 3, TAG_DEV_KV_ACK = 4, TAG_DEV_DKV = 5, TAG_DEV_DKV_ACK = 6,
};
using Message = std::shared_ptr<void>;

// What a collective call is, compared across ranks as they arrive: a bare element count let
// mismatched calls (tensors in another order, a barrier against a ring's check) sum crosswise.
struct Collective {
  std::string name;                // "allReduce", "barrier()", "ring attention's argument check"
  std::vector<std::string> parts;  // an allReduce's tensors: element count and dtype of each
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual void send(int peer, int tag, Block block) = 0;  // returns at once
  virtual Block recv(int peer, int tag) = 0;              // waits, with the group's timeout
  virtual void all_reduce_sum(float* data, size_t n, const Collective& call) = 0;
  virtual void barrier() = 0;
};

// The ranks of one launch(), as threads of this process. Every wait gives up with an
// error on timeout, on abort (another rank failed), when the rank it waits for has already
// left, or at once when every rank still in the group waits and none can be satisfied (only
// rank threads send, so nothing could wake them), so no misuse ends in a hang.
class LocalGroup {
 public:
  LocalGroup(int world_size, int64_t timeout_ms) : world_(world_size), timeout_ms_(timeout_ms), left_(world_size) {}
  int world_size() const { return world_; }
  void send(int from, int to, int tag, Message m);
  Message recv(int from, int to, int tag);
  void all_reduce_sum(int rank, float* data, size_t n, const Collective& call);
  void abort(const std::string& reason);
  void leave(int rank, bool destroyed = false);  // the rank's function returned or threw, or it called destroy()

 private:
  // What a blocked rank waits for, so that the last rank to block can tell a deadlock.
  struct Waiting {
    enum Kind : char { NONE, RECV, COLLECTIVE } kind = NONE;
    int from = 0, tag = 0;   // RECV: the mailbox (from, me, tag)
    int64_t generation = 0;  // COLLECTIVE: the one it joined
    std::string what;
  };
  template <typename Ready>
  void wait(std::unique_lock<std::mutex>& lock, int me, Waiting waiting, Ready ready, const char* rule);
  void check_usable(int rank);
  std::string gone(int rank) const;
  int left_without_joining() const;  // a rank that left before joining the collective in progress, or -1  // "which returned without " or "which destroyed its group without "
  void abort_locked(const std::string& reason);
  void check_deadlock_locked();

  const int world_;
  const int64_t timeout_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::tuple<int, int, int>, std::deque<Message>> mail_;  // (from, to, tag) -> FIFO
  std::vector<char> left_;  // 1: returned, 2: destroyed its group
  std::vector<Waiting> waiting_ = std::vector<Waiting>(size_t(world_));
  std::string aborted_;
  // all_reduce: ranks leave their data in contrib_; the last to arrive sums it in rank order
  // into result_ and bumps generation_.
  int64_t generation_ = 0;
  int arrived_ = 0;
  size_t size_ = 0;
  Collective call_{};  // the first arrival's, which the others must match
  int call_rank_ = 0;
  std::vector<char> arrived_mask_ = std::vector<char>(size_t(world_));
  std::vector<std::vector<float>> contrib_ = std::vector<std::vector<float>>(size_t(world_));
  std::vector<float> result_;
};

// Process-wide registry, so that worker threads find their group by id.
int64_t create_group(int world_size, int64_t timeout_ms);
std::shared_ptr<LocalGroup> find_group(int64_t id);  // throws when it is not active
void destroy_group(int64_t id);

class LocalTransport : public Transport {
 public:
  LocalTransport(std::shared_ptr<LocalGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return g_->world_size(); }
  void send(int peer, int tag, Block b) override { g_->send(rank_, peer, tag, std::move(b)); }
  Block recv(int peer, int tag) override { return std::static_pointer_cast<std::vector<float>>(g_->recv(peer, rank_, tag)); }
  // Messages of other types, for the CUDA ring; the tag fixes the type.
  void post(int peer, int tag, Message m) { g_->send(rank_, peer, tag, std::move(m)); }
  Message take(int peer, int tag) { return g_->recv(peer, rank_, tag); }
  void all_reduce_sum(float* data, size_t n, const Collective& call) override { g_->all_reduce_sum(rank_, data, n, call); }
  void barrier() override { g_->all_reduce_sum(rank_, nullptr, 0, {"barrier()", {}}); }
  void abort(const std::string& reason) { g_->abort(reason); }

 private:
  std::shared_ptr<LocalGroup> g_;
  int rank_;
};

}  // namespace ra::ring
