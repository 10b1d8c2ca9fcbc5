// Storage on either device, and the dtype conversions at the storage boundary.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common.h"
#include "cuda/device.h"

namespace ra {

// An empty tensor's array may be null, and memcpy takes no null pointer even for 0 bytes (UBSan).
void convert_from_f32(DType to, const float* src, void* dst, size_t n) {
  if (n == 0) return;
  if (to == DType::F32) {
    std::memcpy(dst, src, n * 4);
  } else if (to == DType::BF16) {
    auto* d = static_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
  } else {
    auto* d = static_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
  }
}

void convert_to_f32(DType from, const void* src, float* dst, size_t n) {
  if (n == 0) return;
  if (from == DType::F32) {
    std::memcpy(dst, src, n * 4);
  } else if (from == DType::BF16) {
    auto* s = static_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  } else {
    auto* s = static_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  }
}

namespace {
std::string describe(const std::vector<int64_t>& shape, DType dtype, Device device) {
  std::string r = "[";
  for (size_t i = 0; i < shape.size(); ++i) r += (i ? ", " : "") + std::to_string(shape[i]);
  return r + "] " + dtype_name(dtype) + " on " + device_name(device);
}
void check_operand(const char* call, const char* name, const Tensor& t, const std::vector<int64_t>& shape, DType dtype,
                   Device device) {
  if (t.shape == shape && t.dtype == dtype && t.device == device) return;
  throw UserError("RangeError", std::string(call) + ": " + name + " is " + describe(t.shape, t.dtype, t.device) +
                                    ", expected " + describe(shape, dtype, device));
}
}  // namespace

void check_attention_operands(const char* call, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* dout,
                              const Tensor* out, const Tensor* lse) {
  if (q.shape.size() != 4 || k.shape.size() != 4)
    throw UserError("RangeError", std::string(call) + ": q and k must be [batch, seq, heads, headDim]");
  // The kernels take each size as an int (their offsets are 64-bit) and round lengths up to
  // whole tiles (at most 128 rows) in ints too, so a size leaves that much room below 2^31.
  constexpr int64_t kMaxSize = (int64_t(1) << 31) - 1024;
  for (const auto* t : {&q, &k})
    for (const int64_t d : t->shape)
      if (d > kMaxSize)
        throw UserError("RangeError", std::string(call) + ": " + (t == &q ? "q" : "k") + " has a size of " +
                                          std::to_string(d) + "; each size must be at most 2^31 - 1024");
  check_operand(call, "k", k, k.shape, q.dtype, q.device);
  check_operand(call, "v", v, k.shape, q.dtype, q.device);
  if (dout) check_operand(call, "dout", *dout, q.shape, q.dtype, q.device);
  if (out) check_operand(call, "out", *out, q.shape, q.dtype, q.device);
  if (lse) check_operand(call, "lse", *lse, {q.shape[0], q.shape[2], q.shape[1]}, DType::F32, q.device);
}

namespace {
std::atomic<size_t> host_in_use{0}, host_peak{0};

void count_host(size_t bytes) {
  const size_t now = host_in_use.fetch_add(bytes) + bytes;
  size_t peak = host_peak.load();
  while (now > peak && !host_peak.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

HostMemoryStats host_memory_stats() { return {host_in_use.load(), host_peak.load()}; }
void reset_host_peak() { host_peak.store(host_in_use.load()); }

Storage::Storage(Device d, size_t n) : device(d), bytes(n), ptr(nullptr) {
  size_t padded = (n + 63) / 64 * 64;
  if (d == Device::CPU) {
    ptr = std::aligned_alloc(64, padded ? padded : 64);
    if (!ptr) throw UserError("RangeError", "out of host memory allocating " + std::to_string(n) + " bytes");
    count_host(padded);
  } else {
    ptr = cuda::alloc(padded ? padded : 64);
  }
}

Storage::~Storage() {
  if (device == Device::CPU) {
    std::free(ptr);
    host_in_use.fetch_sub((bytes + 63) / 64 * 64);
  } else {
    cuda::release(ptr);
  }
}

Tensor Tensor::empty(std::vector<int64_t> shape, DType dtype, Device device) {
  // The byte count, refused before it can wrap (and wrap numel(), which multiplies the same dims).
  const bool empty = std::find(shape.begin(), shape.end(), int64_t(0)) != shape.end();
  int64_t bytes = empty ? 0 : int64_t(dtype_size(dtype));
  for (int64_t d : shape)
    if (d < 0 || (!empty && (__builtin_mul_overflow(bytes, d, &bytes) || bytes > (int64_t(1) << 56))))
      throw UserError("RangeError", "shape: a tensor of these dimensions would be too large");
  Tensor t;
  t.dtype = dtype;
  t.device = device;
  t.shape = std::move(shape);
  t.storage = std::make_shared<Storage>(device, size_t(bytes));
  return t;
}

std::vector<float> Tensor::to_f32() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  read_f32(out.data());
  return out;
}

void Tensor::read_f32(float* out) const {
  const size_t n = static_cast<size_t>(numel());
  if (device == Device::CPU) convert_to_f32(dtype, storage->ptr, out, n);
  else cuda::download_f32(storage->ptr, dtype, out, n);
}

}  // namespace ra
