// Where in a pinned staging buffer the next host-to-device upload goes. The buffer is used
// as a ring: each upload takes the bytes after the previous one, wrapping to the start when
// they do not fit, and a range is handed out again only after the copy that read it is
// known complete (its fence: a CUDA event in staging.cu, a counter in the test). So the host
// waits only when the device is a whole buffer of uploads behind it.
// Plain C++ (no CUDA) so that test/ops-emulator/test.cpp can check the placement.
#pragma once
#include <cstddef>
#include <deque>

namespace ra::cuda {

template <class Fence>
class StagingRing {
 public:
  explicit StagingRing(size_t capacity) : capacity_(capacity) {}
  size_t capacity() const { return capacity_; }

  // The offset of `bytes` (at most the capacity) that no copy in flight still reads. done(fence)
  // polls a copy; wait(fence) blocks until it has finished. Each fence retired here is
  // given to neither again (the caller may recycle it inside done/wait).
  template <class Done, class Wait>
  size_t reserve(size_t bytes, Done&& done, Wait&& wait) {
    while (!in_flight_.empty() && done(in_flight_.front().fence)) in_flight_.pop_front();
    for (;;) {
      const size_t at = head_ + bytes <= capacity_ ? head_ : 0;
      if (!overlaps_in_flight(at, at + bytes)) {
        head_ = at + bytes;
        return at;
      }
      wait(in_flight_.front().fence);  // copies finish in the order they were queued, the oldest first
      in_flight_.pop_front();
    }
  }
  // The copy reading [at, at + bytes) was queued; `fence` tells when it is done.
  void in_use(size_t at, size_t bytes, Fence fence) { in_flight_.push_back({at, at + bytes, fence}); }
  // Waits for every copy (before the buffer is replaced by a larger one).
  template <class Wait>
  void drain(Wait&& wait) {
    for (; !in_flight_.empty(); in_flight_.pop_front()) wait(in_flight_.front().fence);
    head_ = 0;
  }
  size_t copies_in_flight() const { return in_flight_.size(); }

 private:
  struct Range {
    size_t begin, end;
    Fence fence;
  };
  bool overlaps_in_flight(size_t begin, size_t end) const {
    for (const Range& r : in_flight_)
      if (begin < r.end && r.begin < end) return true;
    return false;
  }
  size_t capacity_, head_ = 0;
  std::deque<Range> in_flight_;
};

}  // namespace ra::cuda
