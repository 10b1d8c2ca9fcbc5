// Host arrays bound for the device (token ids, positions, targets, RoPE frequencies) go
// through pinned memory. A cudaMemcpyAsync from pageable memory may wait for the stream
// before it returns, which would stop the host from queueing work ahead of the GPU; from
// pinned memory it returns at once. staging.h decides where in the buffer each one goes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "check.h"
#include "device.h"
#include "staging.h"

namespace ra::cuda {
namespace {

constexpr size_t kMinStaging = size_t(16) << 20;
constexpr size_t kAlign = 256;

// One per device: its events belong to that device.
struct Stager {
  std::mutex mu;
  StagingRing<cudaEvent_t> ring{0};
  char* buffer = nullptr;
  std::vector<cudaEvent_t> spare;  // events of finished copies, for reuse

  void retire(cudaEvent_t e) { spare.push_back(e); }
  bool done(cudaEvent_t e) {
    const cudaError_t r = cudaEventQuery(e);
    if (r == cudaErrorNotReady) return false;
    check(r, "staged copy");
    retire(e);
    return true;
  }
  void wait(cudaEvent_t e) {
    check(cudaEventSynchronize(e), "staged copy");
    retire(e);
  }
  // A buffer of at least 4 uploads of this size, the old one freed once its copies are done.
  // False when pinned memory is refused (locked-memory limits): the old buffer stays.
  bool grow(size_t bytes) {
    const size_t capacity = std::max({kMinStaging, 2 * ring.capacity(), 4 * bytes});
    char* fresh = nullptr;
    if (cudaHostAlloc(reinterpret_cast<void**>(&fresh), capacity, cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    ring.drain([&](cudaEvent_t e) { wait(e); });
    if (buffer) cudaFreeHost(buffer);
    buffer = fresh;
    ring = StagingRing<cudaEvent_t>(capacity);
    return true;
  }
  cudaEvent_t event() {
    if (!spare.empty()) {
      cudaEvent_t e = spare.back();
      spare.pop_back();
      return e;
    }
    cudaEvent_t e;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    return e;
  }
};

Stager& stager(int device) {
  static std::mutex* mu = new std::mutex();  // never destroyed, like the allocator's cache
  static auto* stagers = new std::map<int, Stager>();
  std::lock_guard<std::mutex> lock(*mu);
  return (*stagers)[device];  // std::map: references stay valid as devices are added
}

}  // namespace

void upload_async(const void* host, void* dst, size_t bytes, void* stream) {
  if (bytes == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  Stager& st = stager(device);
  std::lock_guard<std::mutex> lock(st.mu);
  const size_t span = (bytes + kAlign - 1) / kAlign * kAlign;
  if (span > st.ring.capacity() && !st.grow(span)) {  // no pinned memory for this one: copy it directly
    check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s), "copy to device");
    return;
  }
  const cudaEvent_t e = st.event();  // before the copy: once it is queued, its range must be tracked
  size_t at = 0;
  try {
    at = st.ring.reserve(span, [&](cudaEvent_t f) { return st.done(f); }, [&](cudaEvent_t f) { st.wait(f); });
  } catch (...) {
    st.retire(e);
    throw;
  }
  std::memcpy(st.buffer + at, host, bytes);
  const cudaError_t copied = cudaMemcpyAsync(dst, st.buffer + at, bytes, cudaMemcpyHostToDevice, s);
  const cudaError_t recorded = copied == cudaSuccess ? cudaEventRecord(e, s) : copied;
  if (recorded != cudaSuccess) {
    // The copy may be queued without a fence: wait for the stream before the range is reused.
    if (copied == cudaSuccess) cudaStreamSynchronize(s);
    st.retire(e);
    check(recorded, copied == cudaSuccess ? "cudaEventRecord" : "copy to device");
  }
  st.ring.in_use(at, span, e);
}

}  // namespace ra::cuda
