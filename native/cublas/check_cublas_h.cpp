// Compiled only when the build finds the real cublas_api.h (a CUDA toolkit with cuBLAS, or
// the nvidia-cublas wheel): every declaration in cublas_subset.h must match cuBLAS's,
// or the build fails.
#include <cublas_api.h>

#include <type_traits>

#include "cublas_subset.h"

namespace {
namespace ours = ra::cublas;

template <typename T> struct Real { using type = T; };
template <> struct Real<ours::cublasHandle_t> { using type = ::cublasHandle_t; };
template <> struct Real<ours::cublasHandle_t*> { using type = ::cublasHandle_t*; };
template <> struct Real<ours::cublasStatus_t> { using type = ::cublasStatus_t; };
template <> struct Real<ours::cublasOperation_t> { using type = ::cublasOperation_t; };
template <> struct Real<ours::cublasMath_t> { using type = ::cublasMath_t; };
template <> struct Real<ours::cublasComputeType_t> { using type = ::cublasComputeType_t; };
template <> struct Real<ours::cublasGemmAlgo_t> { using type = ::cublasGemmAlgo_t; };
template <> struct Real<ours::cudaDataType_t> { using type = ::cudaDataType_t; };
template <typename F> struct RealFn;
template <typename R, typename... A> struct RealFn<R (*)(A...)> {
  using type = typename Real<R>::type (*)(typename Real<A>::type...);
};

#define SAME_FN(field, fn) \
  static_assert(std::is_same_v<RealFn<decltype(ours::Api::field)>::type, decltype(&::fn)>, #fn " differs from cublas_api.h")
SAME_FN(Create, cublasCreate_v2);
SAME_FN(SetStream, cublasSetStream_v2);
SAME_FN(SetMathMode, cublasSetMathMode);
SAME_FN(GetStatusString, cublasGetStatusString);
SAME_FN(GemmEx, cublasGemmEx);

static_assert(std::is_same_v<ours::cudaStream_t, ::cudaStream_t>);
#define SAME_VALUE(name) static_assert(int(ours::name) == int(::name), #name " differs from cublas_api.h")
SAME_VALUE(CUBLAS_STATUS_SUCCESS);
SAME_VALUE(CUBLAS_STATUS_NOT_INITIALIZED);
SAME_VALUE(CUBLAS_STATUS_ALLOC_FAILED);
SAME_VALUE(CUBLAS_STATUS_INVALID_VALUE);
SAME_VALUE(CUBLAS_STATUS_ARCH_MISMATCH);
SAME_VALUE(CUBLAS_STATUS_EXECUTION_FAILED);
SAME_VALUE(CUBLAS_STATUS_INTERNAL_ERROR);
SAME_VALUE(CUBLAS_STATUS_NOT_SUPPORTED);
SAME_VALUE(CUBLAS_OP_N);
SAME_VALUE(CUBLAS_OP_T);
SAME_VALUE(CUBLAS_DEFAULT_MATH);
SAME_VALUE(CUBLAS_PEDANTIC_MATH);
SAME_VALUE(CUBLAS_TF32_TENSOR_OP_MATH);
SAME_VALUE(CUBLAS_COMPUTE_32F);
SAME_VALUE(CUBLAS_COMPUTE_32F_FAST_TF32);
SAME_VALUE(CUBLAS_GEMM_DEFAULT);
SAME_VALUE(CUDA_R_32F);
SAME_VALUE(CUDA_R_16F);
SAME_VALUE(CUDA_R_16BF);
}  // namespace
