// Helpers shared by the op launchers (*.cu here): scratch on the caching allocator, host
// arrays uploaded for one call, dtype checks, and the cuBLAS product (gemm.cu).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <string>

#include "../../common.h"
#include "../check.h"
#include "../device.h"

namespace ra::cuda::ops {

// Scratch goes back to the cache when it leaves scope, while kernels may still use it:
// safe because every op runs on the default stream, as does every later user of the block
// (the reasoning of ../attention.cu).
inline Tensor scratch(int64_t n, DType dtype) { return Tensor::empty({n}, dtype, Device::CUDA); }

// A host array copied to the device, in a tensor of 4-byte elements (only the bytes matter),
// through pinned staging: neither waits for the device.
inline Tensor upload(const void* host, size_t bytes) {
  Tensor t = Tensor::empty({int64_t((bytes + 3) / 4)}, DType::F32, Device::CUDA);
  upload_async(host, t.storage->ptr, bytes);
  return t;
}
inline Tensor upload_ints(const int32_t* host, int64_t n) { return upload(host, size_t(n) * 4); }
inline const int32_t* ints(const Tensor& t) { return static_cast<const int32_t*>(t.storage->ptr); }
inline Tensor upload_doubles(const double* host, int64_t n) { return upload(host, size_t(n) * 8); }

// The TS layer checks every argument; these only keep a bad call from reading out of bounds.
inline void expect(const Tensor& t, DType dtype, const char* name) {
  if (t.device != Device::CUDA || t.dtype != dtype)
    throw UserError("TypeError", std::string(name) + ": expected a " + dtype_name(dtype) + " cuda tensor, got " +
                                     dtype_name(t.dtype) + (t.device == Device::CUDA ? " on cuda" : " on cpu"));
}
inline DType activation_dtype(const Tensor& t, const char* name) {
  if (t.device != Device::CUDA || (t.dtype != DType::F32 && t.dtype != DType::BF16))
    throw UserError("TypeError", std::string(name) + ": expected a float32 or bfloat16 cuda tensor");
  return t.dtype;
}
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }
// A tensor as a matrix: rows = shape[0], cols = the rest (0 for an empty tensor, never a division by 0).
inline int64_t rows(const Tensor& t) { return t.shape.empty() ? 1 : t.shape[0]; }
inline int64_t cols(const Tensor& t) { return rows(t) == 0 ? 0 : t.numel() / rows(t); }

// Row-major C[M,N] (= when beta is 0, += when 1) op(A)[M,K] op(B)[K,N] with leading
// dimensions lda, ldb, ldc (row strides). A and B share a dtype (float32 or bfloat16); C is
// float32 or that dtype. float32 compute, no TF32.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda, const void* B,
          int64_t ldb, DType ab, float beta, void* C, int64_t ldc, DType c);

}  // namespace ra::cuda::ops

namespace ra::cuda::ops {
// Calls fn with a null pointer of the storage type: fn((float*)0) or fn((bf16*)0).
template <typename F>
void by_dtype(DType t, F&& fn) {
  if (t == DType::F32) fn(static_cast<float*>(nullptr));
  else fn(static_cast<__nv_bfloat16*>(nullptr));
}
template <typename T> T* ptr(Tensor& t) { return static_cast<T*>(t.storage->ptr); }
template <typename T> const T* ptr(const Tensor& t) { return static_cast<const T*>(t.storage->ptr); }
}  // namespace ra::cuda::ops

namespace ra::cuda::ops {
// Address of element `offset` of a tensor of any dtype (row blocks of ffn and cross-entropy).
inline void* at(const Tensor& t, int64_t offset) {
  return static_cast<char*>(t.storage->ptr) + offset * int64_t(dtype_size(t.dtype));
}
}  // namespace ra::cuda::ops
