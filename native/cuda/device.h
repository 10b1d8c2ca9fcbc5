// The CUDA runtime as the rest of the addon sees it. Built from device.cu when nvcc is
// found, otherwise from stub.cpp, where `compiled` is false and every call throws.
// No driver or no GPU is not an error: query() says so and the library runs on the CPU.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "../common.h"

namespace ra::cuda {

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
};

struct RuntimeInfo {
  bool compiled = false;     // this binary contains CUDA code
  bool available = false;    // a driver and at least one device were found
  int device_count = 0;
  int driver_version = 0;    // e.g. 13000 for CUDA 13.0
  int runtime_version = 0;
  std::string archs;         // architectures compiled in
  std::string reason;        // why not available
  std::vector<DeviceInfo> devices;
};

struct AllocatorStats {
  size_t cuda_malloc_calls = 0;  // real cudaMalloc calls since start
  size_t cache_hits = 0;         // allocations served from the cache
  size_t bytes_in_use = 0;
  size_t bytes_cached = 0;       // freed by tensors, held for reuse
  size_t peak_bytes_in_use = 0;  // since start or the last reset_peak()
};

RuntimeInfo query();
void* alloc(size_t bytes);
void release(void* ptr);
AllocatorStats allocator_stats();
size_t bytes_in_use_on(int device);  // of the tensors alive on that GPU
// Makes `device` current for this thread: the GPU its later tensors, kernels and handles use.
void set_device(int device);
void reset_peak();  // peak_bytes_in_use := bytes_in_use
void empty_cache();

// Host float32 <-> device tensor of `dtype`; conversion runs on the device.
void upload_f32(const float* host, void* device_dst, DType dtype, size_t n);
void download_f32(const void* device_src, DType dtype, float* host, size_t n);
// Device-side work, enqueued on `stream` (a cudaStream_t; null: the default stream) without waiting for it.
void f32_to_dtype(const float* src, void* dst, DType dtype, size_t n, void* stream = nullptr);
void zero(void* ptr, size_t bytes, void* stream = nullptr);
// bytes of host memory to device memory, through a pinned staging buffer (staging.cu): returns
// once `host` may be reused, without waiting for the device.
void upload_async(const void* host, void* device_dst, size_t bytes, void* stream = nullptr);
// Waits for all queued device work (benchmarks, and surfacing asynchronous kernel errors).
void synchronize();

}  // namespace ra::cuda
