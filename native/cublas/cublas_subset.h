// The part of cuBLAS we call, declared here so that one binary builds without cuBLAS and
// loads it at run time (dlopen), as nccl_api.h does for NCCL. Values and signatures are
// cuBLAS's (cublas_api.h, CUDA 12 and 13; the v2 entry points carry the _v2 suffix in the
// library); check_cublas_h.cpp verifies them against the real header whenever the build
// finds one. cuBLASLt is only opened (libcublas needs it), never called.
#pragma once
#include <cstddef>
#include <string>

struct CUstream_st;  // the CUDA runtime's stream, declared as cuda_runtime.h does

namespace ra::cublas {

typedef struct cublasContext* cublasHandle_t;
typedef ::CUstream_st* cudaStream_t;

typedef enum {
  CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7, CUBLAS_STATUS_ARCH_MISMATCH = 8, CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14, CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
// library_types.h's cudaDataType_t (the runtime's header; its values are fixed across releases).
typedef enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType_t;

// Function pointers, named as in cublas_api.h without the prefix (and without _v2).
struct Api {
  cublasStatus_t (*Create)(cublasHandle_t* handle);
  cublasStatus_t (*SetStream)(cublasHandle_t handle, cudaStream_t stream);
  cublasStatus_t (*SetMathMode)(cublasHandle_t handle, cublasMath_t mode);
  const char* (*GetStatusString)(cublasStatus_t status);
  cublasStatus_t (*GemmEx)(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const void* alpha, const void* A, cudaDataType_t Atype, int lda, const void* B,
                           cudaDataType_t Btype, int ldb, const void* beta, void* C, cudaDataType_t Ctype, int ldc,
                           cublasComputeType_t computeType, cublasGemmAlgo_t algo);
};

// Opens libcublasLt at `lt_path`, then libcublas at `path` (its own dependency on the Lt
// soname is then met by the library already open), once per process; resolves every
// symbol above or throws a UserError naming what is missing. Later calls return the same.
const Api& load(const std::string& lt_path, const std::string& path);
// The library load() opened; throws when none was.
const Api& loaded();
// Path of the loaded libcublas, or "" before load().
std::string loaded_path();

}  // namespace ra::cublas
