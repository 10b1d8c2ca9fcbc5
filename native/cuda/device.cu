// Device detection, the caching allocator, and host<->device copies with dtype conversion.
// The CUDA runtime is linked statically; it opens libcuda.so lazily, so a machine without
// a driver loads this binary and simply reports "not available".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>

#include "check.h"
#include "device.h"

#ifndef RA_CUDA_ARCHS
#define RA_CUDA_ARCHS "unknown"
#endif

namespace ra::cuda {
namespace {

// Sizes are rounded so that buffers of nearly equal size share a bucket: 512 B steps below
// 1 MiB, 2 MiB steps above (the granularity cudaMalloc itself works in for large blocks).
size_t round_size(size_t n) {
  const size_t small = 512, large = size_t(2) << 20;
  return n < (size_t(1) << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
}

struct Block {
  int device;
  size_t size;  // rounded
  bool operator<(const Block& o) const { return device != o.device ? device < o.device : size < o.size; }
};

struct Cache {
  std::mutex mu;
  std::multimap<Block, void*> free_blocks;  // (device, rounded size) -> block, reused exactly
  std::unordered_map<void*, Block> live;
  AllocatorStats stats;

  void release_all_free() {
    int current = 0;
    cudaGetDevice(&current);
    for (auto& [block, p] : free_blocks) {
      cudaSetDevice(block.device);
      cudaFree(p);
      stats.bytes_cached -= block.size;
    }
    cudaSetDevice(current);
    free_blocks.clear();
  }
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may outlive static teardown
  return *c;
}

template <typename T>
__global__ void from_f32_kernel(const float* src, T* dst, size_t n);
template <>
__global__ void from_f32_kernel<__nv_bfloat16>(const float* src, __nv_bfloat16* dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}
template <>
__global__ void from_f32_kernel<__half>(const float* src, __half* dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2half_rn(src[i]);
}
template <typename T>
__global__ void to_f32_kernel(const T* src, float* dst, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    dst[i] = float(src[i]);
}

unsigned grid_for(size_t n) { return unsigned(std::min<size_t>((n + 255) / 256, 4096)); }

}  // namespace

static RuntimeInfo query_once() {
  RuntimeInfo info;
  info.compiled = true;
  info.archs = RA_CUDA_ARCHS;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaError_t e = cudaDriverGetVersion(&info.driver_version);
  if (e != cudaSuccess || info.driver_version == 0) {
    info.reason = "no CUDA driver found (libcuda.so could not be loaded)";
    return info;
  }
  e = cudaGetDeviceCount(&info.device_count);
  if (e != cudaSuccess || info.device_count == 0) {
    info.device_count = 0;
    info.reason = e == cudaSuccess ? "no CUDA device found" : std::string("no usable CUDA device: ") + cudaGetErrorString(e);
    if (e == cudaErrorInsufficientDriver)
      info.reason += " (driver " + std::to_string(info.driver_version) + " is older than runtime " +
                     std::to_string(info.runtime_version) + ")";
    cudaGetLastError();  // clear the sticky-free error so later queries start clean
    return info;
  }
  for (int d = 0; d < info.device_count; ++d) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) continue;
    info.devices.push_back({p.name, p.major, p.minor, p.totalGlobalMem, p.multiProcessorCount});
  }
  info.available = true;
  return info;
}

// Devices do not come and go within a process; ask the driver once.
RuntimeInfo query() {
  static const RuntimeInfo info = query_once();
  return info;
}

void* alloc(size_t bytes) {
  Cache& c = cache();
  const size_t size = round_size(bytes);
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");  // blocks belong to the device they were made on
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.free_blocks.find(Block{device, size});
  void* p = nullptr;
  if (it != c.free_blocks.end()) {
    p = it->second;
    c.free_blocks.erase(it);
    c.stats.bytes_cached -= size;
    c.stats.cache_hits++;
  } else {
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {  // give the cache back to the driver, then try once more
      cudaGetLastError();
      c.release_all_free();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw UserError("RangeError", "CUDA out of memory allocating " + std::to_string(bytes) + " bytes (" +
                                        cudaGetErrorString(e) + ")");
    }
    c.stats.cuda_malloc_calls++;
  }
  c.live[p] = Block{device, size};
  c.stats.bytes_in_use += size;
  c.stats.peak_bytes_in_use = std::max(c.stats.peak_bytes_in_use, c.stats.bytes_in_use);
  return p;
}

void release(void* ptr) {
  if (!ptr) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(ptr);
  if (it == c.live.end()) return;
  const Block block = it->second;
  c.live.erase(it);
  c.stats.bytes_in_use -= block.size;
  c.stats.bytes_cached += block.size;
  c.free_blocks.emplace(block, ptr);
}

AllocatorStats allocator_stats() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().stats;
}

size_t bytes_in_use_on(int device) {
  std::lock_guard<std::mutex> lock(cache().mu);
  size_t bytes = 0;
  for (const auto& [ptr, block] : cache().live)
    if (block.device == device) bytes += block.size;
  return bytes;
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

void reset_peak() {
  std::lock_guard<std::mutex> lock(cache().mu);
  cache().stats.peak_bytes_in_use = cache().stats.bytes_in_use;
}

void empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.release_all_free();
}

void upload_f32(const float* host, void* dst, DType dtype, size_t n) {
  if (dtype == DType::F32) {
    check(cudaMemcpy(dst, host, n * 4, cudaMemcpyHostToDevice), "copy to device");
    return;
  }
  Storage staging(Device::CUDA, n * 4);
  check(cudaMemcpy(staging.ptr, host, n * 4, cudaMemcpyHostToDevice), "copy to device");
  auto* src = static_cast<const float*>(staging.ptr);
  if (dtype == DType::BF16) from_f32_kernel<<<grid_for(n), 256>>>(src, static_cast<__nv_bfloat16*>(dst), n);
  else from_f32_kernel<<<grid_for(n), 256>>>(src, static_cast<__half*>(dst), n);
  check(cudaGetLastError(), "conversion kernel launch");
  // The default stream only: a whole-device sync would also wait for other ranks' ring streams.
  check(cudaStreamSynchronize(nullptr), "conversion kernel");
}

void f32_to_dtype(const float* src, void* dst, DType dtype, size_t n, void* stream) {
  if (n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::F32) check(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyDeviceToDevice, s), "device copy");
  else if (dtype == DType::BF16) from_f32_kernel<<<grid_for(n), 256, 0, s>>>(src, static_cast<__nv_bfloat16*>(dst), n);
  else from_f32_kernel<<<grid_for(n), 256, 0, s>>>(src, static_cast<__half*>(dst), n);
  check(cudaGetLastError(), "conversion kernel launch");
}

void synchronize() {
  if (query().available) check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void zero(void* ptr, size_t bytes, void* stream) {
  check(cudaMemsetAsync(ptr, 0, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync");
}

void download_f32(const void* src, DType dtype, float* host, size_t n) {
  if (dtype == DType::F32) {
    check(cudaMemcpy(host, src, n * 4, cudaMemcpyDeviceToHost), "copy to host");
    return;
  }
  Storage staging(Device::CUDA, n * 4);
  auto* dst = static_cast<float*>(staging.ptr);
  if (dtype == DType::BF16) to_f32_kernel<<<grid_for(n), 256>>>(static_cast<const __nv_bfloat16*>(src), dst, n);
  else to_f32_kernel<<<grid_for(n), 256>>>(static_cast<const __half*>(src), dst, n);
  check(cudaGetLastError(), "conversion kernel launch");
  check(cudaMemcpy(host, dst, n * 4, cudaMemcpyDeviceToHost), "copy to host");
}

}  // namespace ra::cuda
