// A stand-in for the CUDA runtime's host API, enough for native/nccl/group.cu to build and
// run without a GPU (test/nccl-fake/test.cpp). Streams and events are plain objects; every
// call is written to fake_log, and fake_stream_idle decides what cudaStreamQuery says. An
// event recorded on a stream while the streams are busy stays pending until they go idle,
// except the next fake_records_done_at_once of them; fake_event_error replaces every answer
// of cudaEventQuery.
#pragma once
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

enum cudaError_t { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorNotReady = 600, cudaErrorIllegalAddress = 700 };
struct CUstream_st { int id; };
struct CUevent_st { int id; };
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
constexpr unsigned cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2;

inline std::vector<std::string> fake_log;
inline bool fake_stream_idle = true;
inline std::set<int> fake_pending_events;
inline int fake_records_done_at_once = 0;
inline cudaError_t fake_event_error = cudaSuccess;
inline int fake_live_streams = 0, fake_live_events = 0, fake_next_id = 1;

inline std::string fake_name(cudaStream_t s) { return s ? "stream" + std::to_string(s->id) : "default"; }
inline const char* cudaGetErrorString(cudaError_t) { return "fake CUDA error"; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
// Streams and events alike: a numbered object, counted while it lives.
template <class T>
cudaError_t fake_create(T** p, int& live) {
  *p = new T{fake_next_id++};
  ++live;
  return cudaSuccess;
}
template <class T>
cudaError_t fake_destroy(T* p, int& live) {
  delete p;
  --live;
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return fake_create(s, fake_live_streams); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) { return fake_destroy(s, fake_live_streams); }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return fake_create(e, fake_live_events); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) { return fake_destroy(e, fake_live_events); }
inline cudaError_t fake_record_error = cudaSuccess;  // what cudaEventRecord answers on a non-default stream
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (s && fake_record_error != cudaSuccess) return fake_record_error;
  fake_log.push_back("record event" + std::to_string(e->id) + " on " + fake_name(s));
  fake_pending_events.erase(e->id);
  if (s && !fake_stream_idle) {
    if (fake_records_done_at_once > 0) --fake_records_done_at_once;
    else fake_pending_events.insert(e->id);
  }
  return cudaSuccess;
}
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  fake_log.push_back(fake_name(s) + " waits event" + std::to_string(e->id));
  return cudaSuccess;
}
// Device and pinned memory alike are host memory here, counted while they live.
inline int fake_live_buffers = 0;
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  ++fake_live_buffers;
  return cudaSuccess;
}
inline bool fake_pinned_refused = false;  // cudaMallocHost answers out of memory
inline cudaError_t cudaMallocHost(void** p, size_t n) {
  if (fake_pinned_refused) return cudaErrorMemoryAllocation;
  return cudaMalloc(p, n);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  --fake_live_buffers;
  return cudaSuccess;
}
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t s) {
  fake_log.push_back("copy " + std::to_string(n) + " bytes on " + fake_name(s));
  std::memcpy(dst, src, n);  // "device" memory is host memory here
  return cudaSuccess;
}
inline cudaError_t cudaStreamQuery(cudaStream_t) { return fake_stream_idle ? cudaSuccess : cudaErrorNotReady; }
inline cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (fake_event_error != cudaSuccess) return fake_event_error;
  return fake_stream_idle || !fake_pending_events.count(e->id) ? cudaSuccess : cudaErrorNotReady;
}
