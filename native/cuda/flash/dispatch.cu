// Host entry points: turn the runtime dtype, head dim and causal flag into one of the
// instantiations in inst/, once per call. Also the small delta kernel the backward needs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "../attention.h"
#include "../check.h"
#include "doc_spans_kernel.cuh"
#include "launch.h"
#include "tma.cuh"

namespace ra::cuda::flash {
namespace {

template <typename T, template <typename, int, bool> class Run, typename P>
void by_dim(const P& p, int head_dim, bool causal, cudaStream_t s) {
  if (head_dim > kMaxHeadDim)
    throw UserError("RangeError", "head dim " + std::to_string(head_dim) + " exceeds the CUDA kernels' maximum of 256");
  if (head_dim <= 64) causal ? Run<T, 64, true>::go(p, s) : Run<T, 64, false>::go(p, s);
  else if (head_dim <= 128) causal ? Run<T, 128, true>::go(p, s) : Run<T, 128, false>::go(p, s);
  else causal ? Run<T, 256, true>::go(p, s) : Run<T, 256, false>::go(p, s);
}

template <typename T, int D, bool C>
struct Fwd {
  static void go(const FwdParams& p, cudaStream_t s) { run_fwd<T, D, C>(p, s); }
};
template <typename T, int D, bool C>
struct Bwd {
  static void go(const BwdParams& p, cudaStream_t s) { run_bwd<T, D, C>(p, s); }
};

void check_params(const FwdParams& p) {
  if (p.kv_heads < 1 || p.heads % p.kv_heads != 0) throw UserError("RangeError", "kv heads must divide heads");
  if (p.head_dim < 1) throw UserError("RangeError", "head dim must be at least 1");
  if (p.doc_q && !(p.doc_k && p.doc_q_spans && p.doc_k_spans)) throw UserError("Error", "internal: attention got document ids without their spans");
}

// The current device's compute capability, major * 10 + minor: asked once per device, not on
// every attention call (each step of a ring makes several).
int current_cc() {
  static std::atomic<int> known[kMaxDevices];  // 0: not asked yet
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < kMaxDevices && known[dev].load() != 0) return known[dev].load();
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
  if (dev < kMaxDevices) known[dev] = major * 10 + minor;
  return major * 10 + minor;
}

// The Hopper kernels (fwd_sm90_kernel.cuh, bwd_sm90_kernel.cuh) matched float64, the CPU
// backend and PyTorch on an H200 once (2026-12-04, commit 3f61040); since then their backward
// has changed (dQ by bulk reductions), and the ring and the model have not yet run through them
// on a GPU. Until both are checked there, they run only when asked for with
// RING_ATTENTION_SM90=1, on an sm_90 device, for the shapes they take (and strides their TMA
// maps and bulk reductions can take: {fwd,bwd}_tma_describable).
bool use_sm90(const FwdParams& p) {
#ifdef RA_WITH_SM90A
  const char* opt = std::getenv("RING_ATTENTION_SM90");
  if (opt == nullptr || std::strcmp(opt, "1") != 0) return false;
  if (!p.vec_ok || (p.head_dim != 64 && p.head_dim != 128)) return false;
  return current_cc() == 90;
#else
  return false;
#endif
}

template <typename T>
void forward_sm90(const FwdParams& p, bool causal, cudaStream_t s) {
  if (p.head_dim == 64) causal ? run_fwd_sm90<T, 64, true>(p, s) : run_fwd_sm90<T, 64, false>(p, s);
  else causal ? run_fwd_sm90<T, 128, true>(p, s) : run_fwd_sm90<T, 128, false>(p, s);
}
template <typename T>
void backward_sm90(const BwdParams& p, bool causal, cudaStream_t s) {
  if (p.fwd.head_dim == 64) causal ? run_bwd_sm90<T, 64, true>(p, s) : run_bwd_sm90<T, 64, false>(p, s);
  else causal ? run_bwd_sm90<T, 128, true>(p, s) : run_bwd_sm90<T, 128, false>(p, s);
}

// One warp per (b, h, i): the dot product of a dout row with an out row.
template <typename T>
__global__ void delta_kernel(FwdParams p, const T* out, const T* dout, float* delta) {
  const int64_t rows = int64_t(p.batch) * p.heads * p.seq_q;
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= rows) return;
  const int i = int(w % p.seq_q), h = int(w / p.seq_q % p.heads), b = int(w / (int64_t(p.seq_q) * p.heads));
  const int64_t off = b * p.o_batch_stride + int64_t(i) * p.o_row_stride + int64_t(h) * p.head_dim;
  float sum = 0.f;
  for (int d = lane; d < p.head_dim; d += 32) sum += float(out[off + d]) * float(dout[off + d]);
  for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  if (lane == 0) delta[b * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + i] = sum;
}

}  // namespace

bool dq_vec4(const BwdParams& p) { return dq_rows_aligned(p) && current_cc() >= 90; }

namespace {
// What kernel_launches() reports: calls whose kernels were launched, and those on the Hopper kernels.
std::atomic<uint64_t> n_forward{0}, n_backward{0}, n_hopper_forward{0}, n_hopper_backward{0};

void check_half(DType dtype) {
  if (dtype != DType::BF16 && dtype != DType::F16) throw UserError("TypeError", "CUDA attention takes bfloat16 or float16 tensors");
}
}  // namespace

void forward(const FwdParams& p, DType dtype, bool causal, void* stream) {
  check_params(p);
  if (p.seq_q == 0 || p.batch == 0) return;
  check_half(dtype);
  auto s = static_cast<cudaStream_t>(stream);
  const bool bf16 = dtype == DType::BF16;
  if (use_sm90(p) && fwd_tma_describable(p)) {
    bf16 ? forward_sm90<__nv_bfloat16>(p, causal, s) : forward_sm90<__half>(p, causal, s);
    ++n_hopper_forward, ++n_forward;
    return;
  }
  bf16 ? by_dim<__nv_bfloat16, Fwd>(p, p.head_dim, causal, s) : by_dim<__half, Fwd>(p, p.head_dim, causal, s);
  ++n_forward;
}

void backward(const BwdParams& p, DType dtype, bool causal, void* stream) {
  check_params(p.fwd);
  if (p.fwd.seq_q == 0 || p.fwd.seq_k == 0 || p.fwd.batch == 0) return;
  check_half(dtype);
  auto s = static_cast<cudaStream_t>(stream);
  const bool bf16 = dtype == DType::BF16;
  if (use_sm90(p.fwd) && bwd_tma_describable(p)) {
    bf16 ? backward_sm90<__nv_bfloat16>(p, causal, s) : backward_sm90<__half>(p, causal, s);
    ++n_hopper_backward, ++n_backward;
    return;
  }
  bf16 ? by_dim<__nv_bfloat16, Bwd>(p, p.fwd.head_dim, causal, s) : by_dim<__half, Bwd>(p, p.fwd.head_dim, causal, s);
  ++n_backward;
}

void document_spans(const int* ids, int batch, int seq, int* spans, void* stream) {
  const int64_t n = int64_t(doc_span_ints(batch, seq) / 2);
  if (n == 0) return;
  doc_spans_kernel<<<unsigned((n + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(ids, batch, seq, spans);
  check(cudaGetLastError(), "document spans launch");
}

void compute_delta(const FwdParams& p, const void* out, const void* dout, float* delta, DType dtype, void* stream) {
  const int64_t rows = int64_t(p.batch) * p.heads * p.seq_q;
  if (rows == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = unsigned((rows * 32 + 255) / 256);
  if (dtype == DType::BF16)
    delta_kernel<<<blocks, 256, 0, s>>>(p, static_cast<const __nv_bfloat16*>(out), static_cast<const __nv_bfloat16*>(dout), delta);
  else if (dtype == DType::F16)
    delta_kernel<<<blocks, 256, 0, s>>>(p, static_cast<const __half*>(out), static_cast<const __half*>(dout), delta);
  else
    throw UserError("TypeError", "CUDA attention takes bfloat16 or float16 tensors");
  check(cudaGetLastError(), "attention delta launch");
}

}  // namespace ra::cuda::flash

namespace ra::cuda {
KernelLaunches kernel_launches() {
  return {flash::n_forward.load(), flash::n_backward.load(), flash::n_hopper_forward.load(), flash::n_hopper_backward.load()};
}
}  // namespace ra::cuda
