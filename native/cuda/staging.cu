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
  StagingRing<cudaEvent_t> ring{0};
  char* buffer = nullptr;
  std::vector<cudaEvent_t> spare;  // events of finished copies, for reuse
  bool pageable = false;           // pinned memory was refused (locked-memory limits): copy directly

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
  // A buffer of at least 4 uploads of this size; the old one is freed once its copies are done.
  void grow(size_t bytes) {
    ring.drain([&](cudaEvent_t e) { wait(e); });
    if (buffer) cudaFreeHost(buffer);
    buffer = nullptr;
    const size_t capacity = std::max({kMinStaging, 2 * ring.capacity(), 4 * bytes});
    if (cudaHostAlloc(reinterpret_cast<void**>(&buffer), capacity, cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      buffer = nullptr;
      pageable = true;
      return;
    }
    ring = StagingRing<cudaEvent_t>(capacity);
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

}  // namespace

void upload_async(const void* host, void* dst, size_t bytes, void* stream) {
  if (bytes == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  static std::mutex* mu = new std::mutex();  // never destroyed, like the allocator's cache
  static auto* stagers = new std::map<int, Stager>();
  std::lock_guard<std::mutex> lock(*mu);
  Stager& st = (*stagers)[device];
  const size_t span = (bytes + kAlign - 1) / kAlign * kAlign;
  if (!st.pageable && span > st.ring.capacity()) st.grow(span);
  if (st.pageable) {
    check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s), "copy to device");
    return;
  }
  const size_t at = st.ring.reserve(span, [&](cudaEvent_t e) { return st.done(e); }, [&](cudaEvent_t e) { st.wait(e); });
  std::memcpy(st.buffer + at, host, bytes);
  check(cudaMemcpyAsync(dst, st.buffer + at, bytes, cudaMemcpyHostToDevice, s), "copy to device");
  const cudaEvent_t e = st.event();
  check(cudaEventRecord(e, s), "cudaEventRecord");
  st.ring.in_use(at, span, e);
}

}  // namespace ra::cuda
