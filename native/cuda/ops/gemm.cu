// Matrix products on CUDA through cuBLAS, opened at run time (native/cublas/loader.cpp), so
// that one binary serves machines without it. cublasGemmEx with float32 compute
// (CUBLAS_COMPUTE_32F): bfloat16 operands run on tensor cores with float32 accumulation;
// float32 operands run in true float32, never TF32, because the CPU ops and their tests
// promise float32 results (TF32 keeps 10 mantissa bits: ~1e-3 relative error, a thousand
// times what the CPU comparison allows). One handle per device, shared by the threads of
// the process under a mutex (cuBLAS calls only enqueue work, so the lock is short).
#include <algorithm>
#include <climits>
#include <map>
#include <mutex>

#include "../../cublas/cublas_subset.h"
#include "internal.h"
#include "ops.h"

namespace ra::cuda::ops {
namespace {

namespace cb = ra::cublas;

std::mutex mu;
std::map<int, cb::cublasHandle_t> handles;  // by device; live for the process, like the library

void ok(const cb::Api& api, cb::cublasStatus_t s, const char* what) {
  if (s != cb::CUBLAS_STATUS_SUCCESS)
    throw UserError("Error", std::string(what) + " failed: " + api.GetStatusString(s));
}

cb::cudaDataType_t cuda_type(DType t) { return t == DType::F32 ? cb::CUDA_R_32F : cb::CUDA_R_16BF; }

int as_int(int64_t v, const char* what) {
  if (v > INT_MAX) throw UserError("RangeError", std::string("matrix product: ") + what + " exceeds cuBLAS's int range");
  return int(v);
}

}  // namespace

void load_cublas(const std::string& lt_path, const std::string& path) { cb::load(lt_path, path); }

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const void* A, int64_t lda, const void* B,
          int64_t ldb, DType ab, float beta, void* C, int64_t ldc, DType c) {
  if (M == 0 || N == 0) return;
  const cb::Api& api = cb::loaded();
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  cb::cublasHandle_t& h = handles[device];
  if (!h) {
    ok(api, api.Create(&h), "cublasCreate");
    // Default math: float32 accumulation; for bfloat16 outputs cuBLAS may still add split-K
    // partial sums in bfloat16, as PyTorch lets it by default (allow_bf16_reduced_precision_reduction).
    ok(api, api.SetMathMode(h, cb::CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  }
  ok(api, api.SetStream(h, nullptr), "cublasSetStream");
  const float alpha = 1.f;
  lda = std::max<int64_t>(lda, 1), ldb = std::max<int64_t>(ldb, 1);  // K = 0 gives 0; cuBLAS wants >= 1
  // cuBLAS is column-major: a row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T,
  // and a row-major matrix read column-major is its transpose, so the flags carry over as they are.
  ok(api,
     api.GemmEx(h, trans_b ? cb::CUBLAS_OP_T : cb::CUBLAS_OP_N, trans_a ? cb::CUBLAS_OP_T : cb::CUBLAS_OP_N,
                as_int(N, "N"), as_int(M, "M"), as_int(K, "K"), &alpha, B, cuda_type(ab), as_int(ldb, "ldb"), A,
                cuda_type(ab), as_int(lda, "lda"), &beta, C, cuda_type(c), as_int(ldc, "ldc"), cb::CUBLAS_COMPUTE_32F,
                cb::CUBLAS_GEMM_DEFAULT),
     "cublasGemmEx");
}

// y[M,N] = x[M,K] w[N,K]^T
Tensor linear(const Tensor& x, const Tensor& w) {
  const DType t = activation_dtype(x, "x");
  expect(w, t, "w");
  const int64_t M = rows(x), K = cols(x), N = rows(w);
  Tensor y = Tensor::empty({M, N}, t, Device::CUDA);
  gemm(false, true, M, N, K, x.storage->ptr, K, w.storage->ptr, K, t, 0.f, y.storage->ptr, N, t);
  return y;
}

// dx[M,K] = dy w (skipped when null); dw[N,K] += dy^T x (float32)
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor* dx, Tensor& dw) {
  const DType t = activation_dtype(x, "x");
  expect(w, t, "w"), expect(dy, t, "dy"), expect(dw, DType::F32, "dw");
  if (dx) expect(*dx, t, "dx");
  const int64_t M = rows(x), K = cols(x), N = rows(w);
  if (dx) gemm(false, false, M, K, N, dy.storage->ptr, N, w.storage->ptr, K, t, 0.f, dx->storage->ptr, K, t);
  gemm(true, false, N, K, M, dy.storage->ptr, N, x.storage->ptr, K, t, 1.f, dw.storage->ptr, K, DType::F32);
}

}  // namespace ra::cuda::ops
