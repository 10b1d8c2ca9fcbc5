// The in-process transport: mailboxes keyed by (from, to, tag) under one mutex.
#include <algorithm>
#include <chrono>
#include <optional>

#include "transport.h"

namespace ra::ring {

namespace {
const char* tag_name(int tag) {
  switch (tag) {
    case TAG_KV: case TAG_DEV_KV: return "K/V block";
    case TAG_DKV: case TAG_DEV_DKV: return "dK/dV block";
    case TAG_DEV_KV_ACK: case TAG_DEV_DKV_ACK: return "receipt for a block";
    default: return "send()";
  }
}
// Why rank `r`'s call differs from rank `first`'s, or "" when they match.
std::string mismatch(int r, const Collective& mine, int first, const Collective& theirs) {
  const std::string me = "rank " + std::to_string(r), them = "rank " + std::to_string(first);
  const std::string order = "; every rank must make the same collective calls, with the same tensors, in the same order";
  if (mine.name != theirs.name) return me + " is in " + mine.name + " while " + them + " is in " + theirs.name + order;
  if (mine.parts.size() != theirs.parts.size())
    return me + "'s " + mine.name + " has " + std::to_string(mine.parts.size()) + " tensors, " + them + "'s " +
           std::to_string(theirs.parts.size()) + order;
  for (size_t i = 0; i < mine.parts.size(); ++i)
    if (mine.parts[i] != theirs.parts[i])
      return me + "'s " + mine.name + " tensor " + std::to_string(i) + " is " + mine.parts[i] + ", " + them + "'s " +
             theirs.parts[i] + order;
  return "";
}
}  // namespace

template <typename Ready>
void LocalGroup::wait(std::unique_lock<std::mutex>& lock, int me, Waiting waiting, Ready ready, const char* rule) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
  // Marked as waiting only while blocked, and unmarked on every way out (ready() may throw).
  struct Mark {
    Waiting& slot;
    Mark(Waiting& s, const Waiting& w) : slot(s) { slot = w; }
    Mark(const Mark&) = delete;
    ~Mark() { slot.kind = Waiting::NONE; }
  };
  std::optional<Mark> mark;
  // The abort first: it names the failure that began it, which may also be why a peer has left
  // (what ready() throws for).
  for (;;) {
    if (!aborted_.empty()) throw UserError("Aborted", "group aborted: " + aborted_);
    if (ready()) return;
    if (!mark) {
      mark.emplace(waiting_[size_t(me)], waiting);
      check_deadlock_locked();
      continue;  // an abort it raised is thrown above
    }
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && aborted_.empty() && !ready())
      throw UserError("Error", "rank " + std::to_string(me) + " timed out after " + std::to_string(timeout_ms_) +
                                   " ms waiting for " + waiting.what + "; " + rule);
  }
}

// Only rank threads send or join collectives, so once every rank still in the group waits and
// no wait can be met, nothing will ever wake them: abort now, naming each wait, rather than
// let the group's timeout (minutes, by default) end it.
void LocalGroup::check_deadlock_locked() {
  if (!aborted_.empty()) return;
  std::string cycle;
  for (int r = 0; r < world_; ++r) {
    if (left_[size_t(r)]) continue;
    const Waiting& w = waiting_[size_t(r)];
    switch (w.kind) {
      case Waiting::NONE: return;  // running: it may still send
      case Waiting::RECV: {
        auto box = mail_.find({w.from, r, w.tag});
        if ((box != mail_.end() && !box->second.empty()) || left_[size_t(w.from)]) return;  // about to wake
        break;
      }
      case Waiting::COLLECTIVE:
        if (generation_ != w.generation || left_without_joining() >= 0) return;  // about to wake
        break;
    }
    cycle += (cycle.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) + " waits for " + w.what;
  }
  if (!cycle.empty())
    abort_locked("deadlock: every rank still in the group waits and none can be met (" + cycle +
                 "); a recv() needs a send() from its peer, and every rank must make the same collective calls in the same order");
}

int LocalGroup::left_without_joining() const {
  for (int r = 0; r < world_; ++r)
    if (left_[size_t(r)] && !arrived_mask_[size_t(r)]) return r;
  return -1;
}

std::string LocalGroup::gone(int rank) const {
  return left_[size_t(rank)] == 2 ? "which destroyed its group without " : "which returned without ";
}

void LocalGroup::check_usable(int rank) {
  if (!aborted_.empty()) throw UserError("Aborted", "group aborted: " + aborted_);
  if (left_[size_t(rank)])
    throw UserError("Error", "rank " + std::to_string(rank) +
                                 " already returned from its launch() function; a group is usable only inside it");
}

void LocalGroup::send(int from, int to, int tag, Message block) {
  std::lock_guard<std::mutex> lock(mu_);
  check_usable(from);
  mail_[{from, to, tag}].push_back(std::move(block));
  cv_.notify_all();
}

Message LocalGroup::recv(int from, int to, int tag) {
  std::unique_lock<std::mutex> lock(mu_);
  check_usable(to);
  auto& box = mail_[{from, to, tag}];
  const std::string what = std::string("a ") + tag_name(tag) + " from rank " + std::to_string(from);
  if (from == to && box.empty())  // no other thread can fill it
    throw UserError("Error", "rank " + std::to_string(to) + " waits for " + what + " (itself), which it has not sent");
  wait(lock, to, {Waiting::RECV, from, tag, 0, what}, [&] {
    if (!box.empty()) return true;
    if (left_[size_t(from)])
      throw UserError("Error", "rank " + std::to_string(to) + " waits for " + what + ", " + gone(from) + "sending it");
    return false;
  }, tag == TAG_USER ? "a recv() needs a send() from its peer, posted before or after it"
                           : "every rank must make the same calls in the same order");
  Message b = std::move(box.front());
  box.pop_front();
  return b;
}

void LocalGroup::all_reduce_sum(int rank, float* data, size_t n, const Collective& call) {
  std::unique_lock<std::mutex> lock(mu_);
  check_usable(rank);
  if (arrived_mask_[size_t(rank)]) {  // only after an earlier failure of this same collective
    const std::string why = "rank " + std::to_string(rank) + " joined the same allReduce twice";
    abort_locked(why);
    throw UserError("Error", why);
  }
  if (arrived_ == 0) {
    size_ = n, call_ = call, call_rank_ = rank;
  } else if (const std::string why = mismatch(rank, call, call_rank_, call_); !why.empty()) {
    abort_locked(why);
    throw UserError("RangeError", why);
  } else if (size_ != n) {
    const std::string why = "rank " + std::to_string(rank) + " joined an allReduce of " + std::to_string(n) +
                            " elements, others of " + std::to_string(size_);
    abort_locked(why);
    throw UserError("RangeError", why);
  }
  contrib_[size_t(rank)].assign(data, data + n);
  arrived_mask_[size_t(rank)] = 1;
  const int64_t gen = generation_;
  if (++arrived_ == world_) {
    // Every rank is here, so a send() still in a mailbox came before its sender's collective and
    // is received after its receiver's. Over NCCL that send goes out before the collective (or a
    // ring call's first block), and the receiver, not yet at its recv(), leaves it unmatched (a
    // hang until the timeout) or matches it with the other call's traffic. Refused here, where
    // the CPU tests run.
    for (const auto& [key, box] : mail_) {
      const auto& [from, to, tag] = key;
      if (tag != TAG_USER || box.empty()) continue;
      const std::string why = "rank " + std::to_string(from) + " sent rank " + std::to_string(to) +
                              " a tensor that rank " + std::to_string(to) + " had not received when every rank joined " +
                              call.name + "; over NCCL that send would go out before the collective and hang (or meet its traffic): recv() it before the collective, or send() it after";
      abort_locked(why);
      throw UserError("Error", why);
    }
    // Summed in rank order, not arrival order: the same bits on every run.
    result_ = contrib_[0];
    for (int r = 1; r < world_; ++r)
      for (size_t i = 0; i < n; ++i) result_[i] += contrib_[size_t(r)][i];
    arrived_ = 0;
    std::fill(arrived_mask_.begin(), arrived_mask_.end(), 0);
    ++generation_;
    cv_.notify_all();
  } else {
    try {
      wait(lock, rank, {Waiting::COLLECTIVE, 0, 0, gen, "every rank to join a collective (" + call.name + ")"}, [&] {
        if (generation_ != gen) return true;
        if (const int r = left_without_joining(); r >= 0)
          throw UserError("Error", "rank " + std::to_string(rank) + " waits in a collective for rank " +
                                       std::to_string(r) + ", " + gone(r) + "joining it");
        return false;
      }, "every rank must make the same collective calls in the same order");
    } catch (const UserError& e) {
      // This rank's data is already in the sum: the collective cannot be completed or retried.
      abort_locked(e.what());
      throw;
    }
  }
  if (n) std::copy(result_.begin(), result_.end(), data);
}

void LocalGroup::abort_locked(const std::string& reason) {
  if (aborted_.empty()) aborted_ = reason;
  cv_.notify_all();
}

void LocalGroup::abort(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  abort_locked(reason);
}

void LocalGroup::leave(int rank, bool destroyed) {
  std::lock_guard<std::mutex> lock(mu_);
  left_[size_t(rank)] = std::max(left_[size_t(rank)], char(destroyed ? 2 : 1));
  cv_.notify_all();
  check_deadlock_locked();  // the ranks left may wait on each other only
}

namespace {
std::mutex registry_mu;
std::map<int64_t, std::shared_ptr<LocalGroup>> registry;
int64_t next_id = 1;
}  // namespace

int64_t create_group(int world_size, int64_t timeout_ms) {
  std::lock_guard<std::mutex> lock(registry_mu);
  registry[next_id] = std::make_shared<LocalGroup>(world_size, timeout_ms);
  return next_id++;
}

std::shared_ptr<LocalGroup> find_group(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto it = registry.find(id);
  if (it == registry.end())
    throw UserError("Error", "group " + std::to_string(id) + " is not active: groups live only inside their launch()");
  return it->second;
}

void destroy_group(int64_t id) {
  std::shared_ptr<LocalGroup> g;
  {
    std::lock_guard<std::mutex> lock(registry_mu);
    auto it = registry.find(id);
    if (it == registry.end()) return;
    g = it->second;
    registry.erase(it);
  }
  g->abort("its launch() has ended");  // releases any thread still waiting on it
}

}  // namespace ra::ring
