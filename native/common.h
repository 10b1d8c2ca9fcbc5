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
// float16 (IEEE binary16), rounded to nearest even; NaN stays NaN. Written out rather than
// through the compiler's _Float16, which GCC before 12 lacks in C++ (Ubuntu 22.04's 11), and
// before 13 on AArch64. test/fixtures/f16-check.cpp compares every half and 44M floats with
// _Float16 where the compiler has it.
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN: quiet, payload's top bits
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);                         // >= 65520 rounds to infinity
  if (a >= 0x38800000u) {                                                          // >= 2^-14: a normal half
    const uint32_t r = a - 0x38000000u;                                            // rebias the exponent (127 - 15)
    return uint16_t(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));              // to nearest even; a carry bumps the exponent
  }
  // Below 2^-14: adding 0.5 leaves |f| in units of 2^-24 (the half's subnormal step) in the
  // sum's low mantissa bits, rounded to nearest even by the float addition itself.
  float t;
  std::memcpy(&t, &a, 4);
  t += 0.5f;
  uint32_t u;
  std::memcpy(&u, &t, 4);
  return uint16_t(sign | (u - 0x3f000000u));
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = h & 0x7c00u, m = h & 0x3ffu;
  uint32_t x;
  if (e == 0x7c00u) {
    x = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u);  // infinity, or a quiet NaN
  } else if (e != 0) {
    x = sign | ((uint32_t(h & 0x7fffu) << 13) + 0x38000000u);
  } else {
    const float f = float(m) * 5.9604644775390625e-8f;  // subnormal: m x 2^-24, exact
    std::memcpy(&x, &f, 4);
    x |= sign;
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
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
