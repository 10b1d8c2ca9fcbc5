// Types shared by every native file: dtypes, devices, the tensor that the N-API layer
// wraps, and the float32 <-> bfloat16/float16 conversions used at the storage boundary.
// Compute is float32 everywhere; half types exist only as storage.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ra {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };
enum class Device : int { CPU = 0, CUDA = 1 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) {
  return t == DType::F32 ? "float32" : t == DType::BF16 ? "bfloat16" : "float16";
}
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// Thrown by native code for errors the caller can fix; the N-API layer turns it into a
// JS exception of the named kind ("TypeError", "RangeError", "Error", or "Aborted": an
// Error with code ERR_RING_ATTENTION_ABORTED, thrown in ranks released by another's failure).
struct UserError : std::runtime_error {
  std::string kind;
  UserError(std::string k, const std::string& msg) : std::runtime_error(msg), kind(std::move(k)) {}
};

// bfloat16: the top half of a float32, rounded to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// float16 through the compiler's IEEE binary16 type (round to nearest even): _Float16, or on
// AArch64 __fp16, since GCC before 13 has no _Float16 in C++ there (GH200, GB200 builds).
#if defined(__aarch64__)
using f16_t = __fp16;
#else
using f16_t = _Float16;
#endif
inline uint16_t f32_to_f16(float f) {
  f16_t h = static_cast<f16_t>(f);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
inline float f16_to_f32(uint16_t u) {
  f16_t h;
  std::memcpy(&h, &u, 2);
  return static_cast<float>(h);
}

void convert_from_f32(DType to, const float* src, void* dst, size_t n);
void convert_to_f32(DType from, const void* src, float* dst, size_t n);

// Host tensor storage of the whole process (every thread): bytes held now and the most held
// since start or reset_host_peak(). Benchmarks read these; op workspaces are not counted.
struct HostMemoryStats {
  size_t bytes_in_use;
  size_t peak_bytes_in_use;
};
HostMemoryStats host_memory_stats();
void reset_host_peak();

// Bytes on one device. CPU memory is 64-byte aligned; CUDA memory comes from the caching
// allocator and goes back to it, so steady-state steps never call cudaMalloc.
struct Storage {
  Device device;
  size_t bytes;
  void* ptr;
  Storage(Device d, size_t n);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  static Tensor empty(std::vector<int64_t> shape, DType dtype, Device device);
  // Float32 copy (or the data itself when already float32) of a CPU tensor.
  std::vector<float> to_f32() const;
  // The same, into numel() floats at `out` (from either device).
  void read_f32(float* out) const;
  const float* f32() const { return static_cast<const float*>(storage->ptr); }
  float* f32() { return static_cast<float*>(storage->ptr); }
};

// q, k and v of attention (with a backward's dout, out and lse), checked as the kernels will
// read them: k of q's rank, dtype and device; v of k's shape; dout and out of q's; lse
// [batch, heads, seqQ] float32. The TypeScript layer checks the same on the JS objects, whose
// fields plain JavaScript can overwrite; a kernel that trusted them would read past a buffer.
void check_attention_operands(const char* call, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor* dout = nullptr, const Tensor* out = nullptr, const Tensor* lse = nullptr);

// build_info.cpp: which build system made this binary ("cmake-js" or "node-gyp"), and the
// file a library name resolves to through the dynamic loader ("" when it cannot be opened).
const char* build_system();
// "avx2+fma" or "portable": the CPU attention and matrix-product code this process runs.
const char* cpu_kernels();
// The threads a CPU kernel may use: RING_ATTENTION_NUM_THREADS (at most 4x the cores), else the cores.
int cpu_threads();
std::string find_library(const std::string& name);

}  // namespace ra
