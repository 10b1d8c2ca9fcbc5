// CPU kernels for a LLaMA-style training step, each with its backward (llm.c style: no
// autograd, one function per pass). Plain float32 pointers, row-major, contiguous; sizes as
// int64_t. Every function says what it writes: "=" overwrites its outputs, "+=" accumulates
// into them (gradients of weights, so that micro-batches and blocks add up). Outputs never
// alias inputs unless stated. All of them are multi-threaded through parallel_for and
// deterministic: the same inputs give the same bits whatever the thread count.
#pragma once
#include <cstdint>

namespace ra::cpu::ops {

// ---- matrix products (gemm.cpp) ----

// C[M,N] (=, or += when `accumulate`) op(A)[M,K] * op(B)[K,N], where element (i, k) of
// op(A) is a[i*rsa + k*csa] and element (k, j) of op(B) is b[k*rsb + j*csb]: any
// transposition is a choice of strides. C has row stride ldc. Each element of C is summed
// in the same order whatever M, N and its position, so a row of C has the same bits
// whether it is computed alone or with others.
void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t rsa, int64_t csa, const float* b, int64_t rsb,
          int64_t csb, float* c, int64_t ldc, bool accumulate);

// nn.Linear without bias: y[M,N] = x[M,K] * w[N,K]^T.                               y =
void linear_forward(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N);
// dx[M,K] = dy[M,N] * w[N,K] (skipped when dx is null);                            dx =
// dw[N,K] += dy[M,N]^T * x[M,K].                                                   dw +=
void linear_backward(const float* dy, const float* x, const float* w, float* dx, float* dw, int64_t M, int64_t K,
                     int64_t N);

// ---- embedding (embedding.cpp) ----

// out[M,C] = table[ids[m], :]; ids must be in [0, V) (checked by the caller).      out =
void embedding_forward(const int32_t* ids, const float* table, float* out, int64_t M, int64_t C);
// dtable[ids[m], :] += dy[m, :] for every m, in token order (deterministic).       dtable +=
void embedding_backward(const int32_t* ids, const float* dy, float* dtable, int64_t M, int64_t C, int32_t skip);  // skip: -1 or an id that adds nothing

// ---- RMSNorm (rmsnorm.cpp), Hugging Face LlamaRMSNorm ----

// rstd[m] = 1 / sqrt(mean_c x[m,c]^2 + eps); y[m,c] = w[c] * x[m,c] * rstd[m].     y =, rstd =
void rmsnorm_forward(const float* x, const float* w, float eps, float* y, float* rstd, int64_t M, int64_t C);
// dx[M,C] = d/dx sum(y * dy);                                                      dx =
// dw[C] += sum_m dy[m,c] * x[m,c] * rstd[m].                                       dw +=
void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd, float* dx, float* dw,
                      int64_t M, int64_t C);

// ---- rotary position embedding (rope.cpp), Hugging Face LLaMA rotate_half ----

// x, out [M,H,D], D even; token m is at positions[m]; inv_freq [D/2] (theta^(-2i/D), or
// rescaled: lib/rope-freq.ts). out = x*cos + rotate_half(x)*sin, angle = pos * inv_freq[i].
// With `inverse` the rotation is undone (the transpose), which is the backward: dx =
// rope(dy, inverse). out may equal x (in place).                                   out =
void rope(const float* x, const int32_t* positions, float* out, int64_t M, int64_t H, int64_t D,
          const double* inv_freq, bool inverse);

// ---- SwiGLU feed-forward (ffn.cpp), processed `block_rows` tokens at a time ----

// y[M,C] = (silu(x wGate^T) * (x wUp^T)) wDown^T with wGate, wUp [F,C], wDown [C,F];
// scratch is 2 * block_rows * F floats, never M * F.                              y =
void ffn_forward(const float* x, const float* w_gate, const float* w_up, const float* w_down, float* y, int64_t M,
                 int64_t C, int64_t F, int64_t block_rows);
// Recomputes gate and up per block (scratch 3 * block_rows * F floats).
// dx[M,C] = d/dx sum(y * dy);                                                      dx =
// dw_gate[F,C], dw_up[F,C], dw_down[C,F] += their gradients.                       dw* +=
void ffn_backward(const float* dy, const float* x, const float* w_gate, const float* w_up, const float* w_down,
                  float* dx, float* dw_gate, float* dw_up, float* dw_down, int64_t M, int64_t C, int64_t F,
                  int64_t block_rows);

// ---- LM head + cross-entropy (cross_entropy.cpp), chunk_rows tokens at a time ----

struct CrossEntropyResult {
  double loss_sum;  // sum over counted tokens of -log softmax(h wHead^T)[target]
  int64_t count;    // tokens whose target is not ignore_index
};
// logits of a chunk are [chunk_rows, V] and exist once; targets must be ignore_index or in
// [0, V) (checked by the caller). When dh is given:  dh[M,C] = grad_scale * d(loss_sum)/dh
// (rows with an ignored target get 0).                                             dh =
// When dw_head is given: dw_head[V,C] += grad_scale * d(loss_sum)/dwHead.          dw_head +=
CrossEntropyResult cross_entropy(const float* h, const float* w_head, const int32_t* targets, int64_t M, int64_t C,
                                 int64_t V, int64_t chunk_rows, int32_t ignore_index, float grad_scale, float* dh,
                                 float* dw_head);

// ---- parameter initialisation (random.cpp) ----

// out[i] ~ normal(0, std), i < n: a pure function of (seed, stream, i), whatever the thread count.
void random_normal(float* out, int64_t n, uint64_t seed, uint64_t stream, double std);

// ---- optimizer and gradient utilities (optim.cpp), n elements each ----

// torch.optim.AdamW, one step: param *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// param -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), bc_i = 1 - b_i^step.         param, m, v updated
void adamw(float* param, const float* grad, float* m, float* v, int64_t n, int64_t step, float lr, float beta1,
           float beta2, float eps, float weight_decay);
// sum of x[i]^2 accumulated in double, in a fixed order (deterministic).
double sum_of_squares(const float* x, int64_t n);
void scale(float* x, int64_t n, float s);              // x *= s
void add(float* a, const float* b, int64_t n);          // a += b
void zero(float* x, int64_t n);                         // x = 0

}  // namespace ra::cpu::ops
